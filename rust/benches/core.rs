//! Criterion benchmarks of the hot paths: command parsing, DATA un-stuffing,
//! dot-stuffing and address parsing.
//!
//! Run with `cargo bench -p smtprs-core` from the repository root.

use std::hint::black_box;

use _core::address::{parse_path, PathOptions};
use _core::data::{DataDecoder, DataLimits};
use _core::server::{Event, ServerConfig, ServerConnection};
use _core::stuff::dot_stuff;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

/// A message of about `size` octets: a short header block, then 76-character
/// lines, every 10th starting with a dot.
fn body(size: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(size + 100);
    out.extend_from_slice(
        b"Received: from a.example by b.example; Mon, 1 Jan 2024 00:00:00 +0000\r\n\
          Date: Mon, 1 Jan 2024 00:00:00 +0000\r\nMessage-ID: <x@a.example>\r\n\
          Subject: benchmark\r\n\r\n",
    );
    let mut n = 0;
    while out.len() < size {
        if n % 10 == 0 {
            out.push(b'.');
        }
        out.extend((0..76).map(|i| b'a' + ((i + n) % 26) as u8));
        out.extend_from_slice(b"\r\n");
        n += 1;
    }
    out
}

fn commands(c: &mut Criterion) {
    let one = "MAIL FROM:<sender@example.org> SIZE=12345 BODY=8BITMIME\r\n\
               RCPT TO:<rcpt@example.com>\r\nRSET\r\nNOOP\r\n";
    let input = one.repeat(250).into_bytes(); // 1000 commands
    let mut g = c.benchmark_group("commands");
    g.throughput(Throughput::Elements(1000));
    g.bench_function("1000 pipelined", |b| {
        b.iter(|| {
            let mut conn = ServerConnection::new(ServerConfig::default());
            conn.receive_data(black_box(&input)).unwrap();
            let mut n = 0;
            while let Some(ev) = conn.next_event() {
                black_box(&ev);
                n += 1;
            }
            assert_eq!(n, 1000);
        })
    });
    g.finish();
}

fn unstuff(c: &mut Criterion) {
    let content = body(1 << 20);
    let wire = dot_stuff(&content);
    let mut g = c.benchmark_group("unstuff");
    g.throughput(Throughput::Bytes(wire.len() as u64));
    g.bench_function("decoder 1 MB", |b| {
        let mut out = Vec::with_capacity(wire.len());
        b.iter(|| {
            out.clear();
            let mut dec = DataDecoder::new(DataLimits::NONE);
            let r = dec.decode(black_box(&wire), &mut out);
            assert!(r.done);
            black_box(&out);
        })
    });
    g.bench_function("connection 1 MB in 64 KiB reads", |b| {
        let limits = ServerConfig {
            max_message_size: 1 << 30,
            ..ServerConfig::default()
        };
        b.iter(|| {
            let mut conn = ServerConnection::new(limits);
            conn.start_data().unwrap();
            for piece in wire.chunks(64 * 1024) {
                conn.receive_data(piece).unwrap();
                while let Some(ev) = conn.next_event() {
                    if let Event::DataEnd(s) = ev {
                        assert!(s.error.is_none());
                    }
                }
            }
        })
    });
    g.throughput(Throughput::Bytes(content.len() as u64));
    g.bench_function("dot_stuff 1 MB", |b| {
        b.iter(|| black_box(dot_stuff(black_box(&content))))
    });
    g.finish();
}

fn addresses(c: &mut Criterion) {
    let paths = [
        "<user@example.com>",
        "<first.last+tag@mail.example.org>",
        "<\"quoted local\"@example.net>",
        "<u@[192.0.2.1]>",
        "<@relay.example:user@example.com>",
        "<postmaster@sub.domain.example.co.uk>",
        "<x@[IPv6:2001:db8::1]>",
        "<a.b.c.d@e.f.g.h>",
    ];
    let opts = PathOptions {
        smtputf8: false,
        allow_null: true,
        allow_postmaster: false,
    };
    let mut g = c.benchmark_group("addresses");
    g.throughput(Throughput::Elements(paths.len() as u64));
    g.bench_function("parse_path", |b| {
        b.iter(|| {
            for p in paths {
                black_box(parse_path(black_box(p), opts).unwrap());
            }
        })
    });
    g.finish();
}

criterion_group!(benches, commands, unstuff, addresses);
criterion_main!(benches);
