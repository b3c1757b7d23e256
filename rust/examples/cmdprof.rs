//! The body of the "commands/1000 pipelined" criterion benchmark, N times
//! (default 100), without criterion: a stable target for callgrind.
//!
//!     cargo build --release -p smtprs-core --example cmdprof
//!     valgrind --tool=callgrind target/release/examples/cmdprof 10
//!     valgrind --tool=callgrind target/release/examples/cmdprof 20
//!
//! (Ir(20) - Ir(10)) / 10,000 is the instruction count per command.

use _core::server::{ServerConfig, ServerConnection};
use std::hint::black_box;
fn main() {
    let iters: usize = std::env::args()
        .nth(1)
        .map(|s| s.parse().unwrap())
        .unwrap_or(100);
    let one = "MAIL FROM:<sender@example.org> SIZE=12345 BODY=8BITMIME\r\n\
               RCPT TO:<rcpt@example.com>\r\nRSET\r\nNOOP\r\n";
    let input = one.repeat(250).into_bytes();
    for _ in 0..iters {
        let mut conn = ServerConnection::new(ServerConfig::default());
        conn.receive_data(black_box(&input)).unwrap();
        let mut n = 0;
        while let Some(ev) = conn.next_event() {
            black_box(&ev);
            n += 1;
        }
        assert_eq!(n, 1000);
    }
}
