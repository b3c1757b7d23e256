//! Batched durable file writes for the local delivery agents.
//!
//! This is the one module of the crate that touches files; the protocol
//! engine stays sans-I/O.  It exists because a Maildir delivery is a dozen
//! small syscalls (open, pread, write, fsync, close, rename, directory fsync)
//! and, done from Python in a worker thread, each of them drops and retakes the
//! GIL while the event loop wants it: the convoy costs far more than the
//! syscalls.  Here a whole batch runs with the GIL released, and the batch
//! shares its directory fsyncs.
//!
//! For each job: if `dst` exists the job is already done (deliveries are
//! idempotent by name); otherwise `head` plus the content range of `src`
//! (optionally CRLF -> LF) is written to `tmp`; then every tmp file is
//! fsync'd, renamed to its `dst`, and each distinct directory of a `dst` is
//! fsync'd once.  A failed job leaves no tmp file behind.

use std::collections::{BTreeSet, HashMap};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::stuff::LfConverter;

/// One file to write.
#[derive(Debug, Clone)]
pub struct FileJob {
    pub src: PathBuf,
    pub offset: u64,
    pub length: u64,
    pub head: Vec<u8>,
    pub tmp: PathBuf,
    pub dst: PathBuf,
    /// Permission bits of the file (applied exactly, whatever the umask).
    pub mode: u32,
    /// (uid, gid) to give the file, or None to keep ours.
    pub owner: Option<(u32, u32)>,
}

const CHUNK: usize = 1 << 20;

/// The mode of a delivered file unless the job asks for another.
pub const DEFAULT_MODE: u32 = 0o600;

fn write_tmp(job: &FileJob, src: &File, to_lf: bool) -> io::Result<File> {
    let mut out = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(job.mode)
        .open(&job.tmp)?;
    if job.mode != DEFAULT_MODE {
        // the umask may have taken bits away: a group- or world-readable
        // mailbox asked for must be one (one fchmod, only when configured)
        out.set_permissions(fs::Permissions::from_mode(job.mode))?;
    }
    if let Some((uid, gid)) = job.owner {
        std::os::unix::fs::fchown(&out, Some(uid), Some(gid))?;
    }
    let mut buf = vec![0u8; CHUNK.min(job.length as usize).max(1)];
    let mut conv = LfConverter::new();
    let mut converted = Vec::with_capacity(buf.len() + 1);
    let mut pending = job.head.clone();
    let mut pos = job.offset;
    let end = job.offset + job.length;
    while pos < end {
        let want = ((end - pos) as usize).min(buf.len());
        let n = src.read_at(&mut buf[..want], pos)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "spooled content is shorter than recorded",
            ));
        }
        pos += n as u64;
        if to_lf {
            converted.clear();
            conv.feed_into(&buf[..n], &mut converted);
            pending.extend_from_slice(&converted);
        } else {
            pending.extend_from_slice(&buf[..n]);
        }
        if pending.len() >= CHUNK {
            out.write_all(&pending)?;
            pending.clear();
        }
    }
    if to_lf {
        pending.extend_from_slice(&conv.finish());
    }
    out.write_all(&pending)?;
    Ok(out)
}

/// Write every job durably; one result per job, in order.
pub fn write_batch(jobs: &[FileJob], to_lf: bool, sync: bool) -> Vec<io::Result<()>> {
    let mut results: Vec<io::Result<()>> = Vec::with_capacity(jobs.len());
    let mut open: Vec<Option<File>> = Vec::with_capacity(jobs.len());
    // The jobs of a batch mostly read the same spool segment: open it once.
    let mut sources: HashMap<&Path, File> = HashMap::new();
    for job in jobs {
        if job.dst.exists() {
            results.push(Ok(()));
            open.push(None);
            continue;
        }
        let src = match sources.get(job.src.as_path()) {
            Some(f) => Ok(f),
            None => File::open(&job.src).map(|f| &*sources.entry(job.src.as_path()).or_insert(f)),
        };
        match src.and_then(|src| write_tmp(job, src, to_lf)) {
            Ok(f) => {
                results.push(Ok(()));
                open.push(Some(f));
            }
            Err(e) => {
                let _ = fs::remove_file(&job.tmp);
                results.push(Err(e));
                open.push(None);
            }
        }
    }
    let mut dirs: BTreeSet<&Path> = BTreeSet::new();
    for ((job, file), result) in jobs.iter().zip(open).zip(results.iter_mut()) {
        let Some(file) = file else { continue };
        let done = (|| {
            if sync {
                file.sync_all()?;
            }
            drop(file);
            fs::rename(&job.tmp, &job.dst)
        })();
        if let Err(e) = done {
            let _ = fs::remove_file(&job.tmp);
            *result = Err(e);
        } else if let Some(parent) = job.dst.parent() {
            dirs.insert(parent);
        }
    }
    if sync {
        for dir in dirs {
            if let Err(e) = File::open(dir).and_then(|d| d.sync_all()) {
                for (job, result) in jobs.iter().zip(results.iter_mut()) {
                    if result.is_ok() && job.dst.parent() == Some(dir) {
                        *result = Err(io::Error::new(e.kind(), e.to_string()));
                    }
                }
            }
        }
    }
    results
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmpdir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("smtprs-fileio-{}-{}", name, std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(d.join("tmp")).unwrap();
        fs::create_dir_all(d.join("new")).unwrap();
        d
    }

    /// `length` octets of `d/src` from `offset` into `d/new/name`, no head, default mode.
    fn job(d: &Path, src: &str, name: &str, offset: u64, length: u64) -> FileJob {
        FileJob {
            src: d.join(src),
            offset,
            length,
            head: Vec::new(),
            tmp: d.join("tmp").join(name),
            dst: d.join("new").join(name),
            mode: DEFAULT_MODE,
            owner: None,
        }
    }

    #[test]
    fn writes_range_with_head_and_lf() {
        let d = tmpdir("range");
        fs::write(d.join("seg"), b"XXXXa\r\nb\r\nYYYY").unwrap();
        let job = FileJob {
            head: b"H: 1\n".to_vec(),
            ..job(&d, "seg", "m1", 4, 6)
        };
        let r = write_batch(std::slice::from_ref(&job), true, true);
        assert!(r[0].is_ok());
        assert_eq!(fs::read(&job.dst).unwrap(), b"H: 1\na\nb\n");
        assert!(!job.tmp.exists());
        // idempotent: an existing destination is left alone
        fs::write(&job.dst, b"kept").unwrap();
        assert!(write_batch(std::slice::from_ref(&job), true, true)[0].is_ok());
        assert_eq!(fs::read(&job.dst).unwrap(), b"kept");
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn the_mode_asked_for_is_the_mode_written() {
        let d = tmpdir("mode");
        fs::write(d.join("seg"), b"x\r\n").unwrap();
        let job = FileJob {
            mode: 0o644,
            ..job(&d, "seg", "w", 0, 3)
        };
        assert!(write_batch(std::slice::from_ref(&job), true, false)[0].is_ok());
        let mode = fs::metadata(&job.dst).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o644);
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn jobs_sharing_a_source_each_get_their_own_range() {
        let d = tmpdir("shared");
        fs::write(d.join("seg"), b"one\r\ntwo\r\nthree\r\n").unwrap();
        let named = |name: &str, offset: u64, length: u64| FileJob {
            head: name.as_bytes().to_vec(),
            ..job(&d, "seg", name, offset, length)
        };
        let jobs = [named("c", 10, 7), named("a", 0, 5), named("b", 5, 5)];
        assert!(write_batch(&jobs, true, false).iter().all(|r| r.is_ok()));
        assert_eq!(fs::read(d.join("new/a")).unwrap(), b"aone\n");
        assert_eq!(fs::read(d.join("new/b")).unwrap(), b"btwo\n");
        assert_eq!(fs::read(d.join("new/c")).unwrap(), b"cthree\n");
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_failing_job_does_not_stop_the_others() {
        let d = tmpdir("fail");
        fs::write(d.join("seg"), b"hello\r\n").unwrap();
        let good = job(&d, "seg", "g", 0, 7);
        let missing = job(&d, "nope", "b", 0, 7);
        let short = job(&d, "seg", "s", 0, 70);
        let r = write_batch(&[missing, good, short], false, true);
        assert!(r[0].is_err() && r[1].is_ok() && r[2].is_err());
        assert_eq!(fs::read(d.join("new/g")).unwrap(), b"hello\r\n");
        assert!(!d.join("tmp/s").exists() && !d.join("new/s").exists());
        fs::remove_dir_all(&d).unwrap();
    }
}
