//! smtprs._core: the sans-I/O SMTP engine, and its Python binding.
//!
//! The modules below are plain Rust, usable (and tested) without Python; the
//! binding lives in this file alone.  It owns no logic: it converts arguments,
//! wraps results in the classes `_core.pyi` describes, releases the GIL around
//! big chunks, and turns [`error::Error`] into the `smtprs.errors` exceptions.
#![deny(clippy::undocumented_unsafe_blocks)]

pub mod address;
pub mod buffer;
pub mod command;
pub mod data;
pub mod error;
pub mod fileio;
pub mod params;
pub mod reply;
pub mod server;
pub mod stuff;

use pyo3::buffer::PyBuffer;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList, PyString};

use crate::error::Error;

/// Work on more octets than this is done with the GIL released.
const DETACH_THRESHOLD: usize = server::DETACH_THRESHOLD;

/// Run `f` on the octets of a bytes-like object: borrowed for `bytes`, copied
/// for other buffers (bytearray, memoryview).
fn with_bytes<R>(data: &Bound<'_, PyAny>, f: impl FnOnce(&[u8]) -> R) -> PyResult<R> {
    if let Ok(b) = data.cast::<PyBytes>() {
        return Ok(f(b.as_bytes()));
    }
    let buf = PyBuffer::<u8>::get(data)?;
    Ok(f(&buf.to_vec(data.py())?))
}

/// Run `f` with the GIL released when `len` is large.
fn maybe_detach<T: Send>(py: Python<'_>, len: usize, f: impl FnOnce() -> T + Send) -> T {
    if len >= DETACH_THRESHOLD {
        py.detach(f)
    } else {
        f()
    }
}

fn address_error(e: address::AddressError) -> PyErr {
    Error::Address {
        message: e.to_string(),
        code: 553,
        enhanced: "5.1.3",
    }
    .into()
}

// ---------------------------------------------------------------- addresses

/// An RFC 5321 reverse-path or forward-path.
#[pyclass(frozen, eq, hash, name = "Path", module = "smtprs._core")]
#[derive(PartialEq, Hash)]
pub struct PyPath(address::Path);

#[pymethods]
impl PyPath {
    #[getter]
    fn local_part(&self) -> &str {
        &self.0.local_part
    }
    #[getter]
    fn domain(&self) -> &str {
        &self.0.domain
    }
    #[getter]
    fn is_null(&self) -> bool {
        self.0.is_null
    }
    #[getter]
    fn route(&self) -> Vec<String> {
        self.0.route.clone()
    }
    #[getter]
    fn is_utf8(&self) -> bool {
        self.0.is_utf8()
    }
    #[getter]
    fn quoted(&self) -> bool {
        self.0.quoted
    }
    fn address(&self) -> String {
        self.0.address()
    }
    fn __str__(&self) -> String {
        self.0.to_string()
    }
    fn __repr__(&self) -> String {
        format!("Path({:?})", self.0.to_string())
    }
}

#[pyfunction]
#[pyo3(signature = (text, *, smtputf8 = false, allow_null = true))]
fn parse_path(text: &str, smtputf8: bool, allow_null: bool) -> PyResult<PyPath> {
    let opts = address::PathOptions {
        smtputf8,
        allow_null,
        allow_postmaster: !allow_null,
    };
    address::parse_path(text, opts)
        .map(PyPath)
        .map_err(address_error)
}

#[pyfunction]
#[pyo3(signature = (text, *, smtputf8 = false))]
fn parse_mailbox(text: &str, smtputf8: bool) -> PyResult<PyPath> {
    address::parse_mailbox(text, smtputf8)
        .map(PyPath)
        .map_err(address_error)
}

#[pyfunction]
fn xtext_decode(text: &str) -> PyResult<String> {
    params::xtext_decode(text).map_err(|e| Error::parse(e.to_string()).into())
}

#[pyfunction]
fn xtext_encode(text: &str) -> String {
    params::xtext_encode(text)
}

// ------------------------------------------------------------------- events

/// One parsed command line.
#[pyclass(frozen, module = "smtprs._core")]
pub struct Command {
    verb: &'static str,
    arg: String,
    path: Option<Py<PyPath>>,
    params: params::Params,
    bdat_size: Option<u64>,
    bdat_last: bool,
}

#[pymethods]
impl Command {
    #[getter]
    fn verb(&self) -> &'static str {
        self.verb
    }
    #[getter]
    fn arg(&self) -> &str {
        &self.arg
    }
    #[getter]
    fn path(&self, py: Python<'_>) -> Option<Py<PyPath>> {
        self.path.as_ref().map(|p| p.clone_ref(py))
    }
    #[getter]
    fn params<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let d = PyDict::new(py);
        for (k, v) in &self.params {
            d.set_item(k, v.as_deref())?;
        }
        Ok(d)
    }
    #[getter]
    fn bdat_size(&self) -> Option<u64> {
        self.bdat_size
    }
    #[getter]
    fn bdat_last(&self) -> bool {
        self.bdat_last
    }
    fn __repr__(&self) -> String {
        format!("Command(verb={:?}, arg={:?})", self.verb, self.arg)
    }
}

/// A command line that could not be parsed, with its reply.
#[pyclass(frozen, get_all, module = "smtprs._core")]
pub struct CommandError {
    code: u16,
    enhanced: &'static str,
    text: String,
    verb: Option<&'static str>,
    fatal: bool,
}

#[pymethods]
impl CommandError {
    fn __repr__(&self) -> String {
        format!(
            "CommandError({} {} {:?})",
            self.code, self.enhanced, self.text
        )
    }
}

/// A line read in line mode, CRLF removed.
#[pyclass(frozen, get_all, module = "smtprs._core")]
pub struct RawLine {
    line: Py<PyBytes>,
}

/// Message content.
#[pyclass(frozen, get_all, module = "smtprs._core")]
pub struct DataChunk {
    data: Py<PyBytes>,
}

#[pymethods]
impl DataChunk {
    fn __repr__(&self, py: Python<'_>) -> String {
        format!(
            "DataChunk(<{} octets>)",
            self.data.bind(py).as_bytes().len()
        )
    }
}

/// A non-LAST BDAT chunk has been read in full.
#[pyclass(frozen, get_all, module = "smtprs._core")]
pub struct BdatChunkEnd {
    chunk_size: u64,
    total_size: u64,
}

/// The end of a message.
#[pyclass(frozen, get_all, module = "smtprs._core")]
pub struct DataEnd {
    size: u64,
    received_count: u32,
    has_date: bool,
    has_message_id: bool,
    header_size: u64,
    eight_bit: bool,
    error: Option<&'static str>,
    code: u16,
    enhanced: &'static str,
    text: &'static str,
}

#[pymethods]
impl DataEnd {
    fn __repr__(&self) -> String {
        format!("DataEnd(size={}, error={:?})", self.size, self.error)
    }
}

/// The peer closed and every buffered event was taken.
#[pyclass(frozen, get_all, module = "smtprs._core")]
pub struct ConnectionClosed {
    mid_data: bool,
}

fn command_to_py(py: Python<'_>, c: command::Command) -> PyResult<Py<Command>> {
    let path = c.path.map(|p| Py::new(py, PyPath(p))).transpose()?;
    let cmd = Command {
        verb: c.verb.as_str(),
        arg: c.arg,
        path,
        params: c.params,
        bdat_size: c.bdat_size,
        bdat_last: c.bdat_last,
    };
    Py::new(py, cmd)
}

fn event_to_py(py: Python<'_>, event: server::Event) -> PyResult<Py<PyAny>> {
    use server::Event as E;
    Ok(match event {
        E::Command(c) => command_to_py(py, c)?.into_any(),
        E::CommandError(e) => Py::new(
            py,
            CommandError {
                code: e.code,
                enhanced: e.enhanced,
                text: e.text,
                verb: e.verb.map(command::Verb::as_str),
                fatal: e.fatal,
            },
        )?
        .into_any(),
        E::RawLine(line) => Py::new(
            py,
            RawLine {
                line: PyBytes::new(py, &line).unbind(),
            },
        )?
        .into_any(),
        E::DataChunk(data) => Py::new(
            py,
            DataChunk {
                data: PyBytes::new(py, &data).unbind(),
            },
        )?
        .into_any(),
        E::BdatChunkEnd {
            chunk_size,
            total_size,
        } => Py::new(
            py,
            BdatChunkEnd {
                chunk_size,
                total_size,
            },
        )?
        .into_any(),
        E::DataEnd(s) => Py::new(
            py,
            DataEnd {
                size: s.size,
                received_count: s.received_count,
                has_date: s.has_date,
                has_message_id: s.has_message_id,
                header_size: s.header_size,
                eight_bit: s.eight_bit,
                error: s.error.map(data::ContentError::name),
                code: s.error.map_or(0, data::ContentError::code),
                enhanced: s.error.map_or("", data::ContentError::enhanced),
                text: s.error.map_or("", data::ContentError::text),
            },
        )?
        .into_any(),
        E::ConnectionClosed { mid_data } => Py::new(py, ConnectionClosed { mid_data })?.into_any(),
    })
}

// --------------------------------------------------------------- connection

/// The replies a ServerConnection gives by itself (see server::AutoReplies).
#[pyclass(frozen, module = "smtprs._core")]
pub struct AutoReplies {
    inner: std::sync::Arc<server::AutoReplies>,
}

#[pymethods]
impl AutoReplies {
    #[new]
    #[pyo3(signature = (
        *, ehlo = None, helo = None, lhlo = None, data = None, quit = None,
        noop = None, rset = None, vrfy = None, help = None, max_junk = 0,
        sequence = None, max_errors = 0, mail = None,
    ))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        ehlo: Option<Vec<u8>>,
        helo: Option<Vec<u8>>,
        lhlo: Option<Vec<u8>>,
        data: Option<Vec<u8>>,
        quit: Option<Vec<u8>>,
        noop: Option<Vec<u8>>,
        rset: Option<Vec<u8>>,
        vrfy: Option<Vec<u8>>,
        help: Option<Vec<u8>>,
        max_junk: u64,
        sequence: Option<std::collections::HashMap<String, Vec<u8>>>,
        max_errors: u64,
        mail: Option<Vec<u8>>,
    ) -> PyResult<Self> {
        let sequence = match sequence {
            None => None,
            Some(mut m) => {
                let mut take = |name: &str| {
                    m.remove(name).ok_or_else(|| {
                        pyo3::exceptions::PyValueError::new_err(format!(
                            "sequence: no reply for {name}"
                        ))
                    })
                };
                let r = server::SequenceReplies {
                    need_helo: take("need_helo")?,
                    nested_mail: take("nested_mail")?,
                    txn_in_progress: take("txn_in_progress")?,
                    need_mail: take("need_mail")?,
                    need_rcpt: take("need_rcpt")?,
                    no_valid_rcpt: take("no_valid_rcpt")?,
                };
                if let Some(other) = m.keys().next() {
                    return Err(pyo3::exceptions::PyValueError::new_err(format!(
                        "sequence: unknown reply {other}"
                    )));
                }
                Some(r)
            }
        };
        Ok(AutoReplies {
            inner: std::sync::Arc::new(server::AutoReplies {
                ehlo,
                helo,
                lhlo,
                data,
                quit,
                noop,
                rset,
                vrfy,
                help,
                max_junk,
                sequence,
                max_errors,
                mail,
            }),
        })
    }

    fn __repr__(&self) -> String {
        let i = &self.inner;
        let mut names: Vec<&str> = [
            ("EHLO", &i.ehlo),
            ("HELO", &i.helo),
            ("LHLO", &i.lhlo),
            ("DATA", &i.data),
            ("QUIT", &i.quit),
            ("NOOP", &i.noop),
            ("RSET", &i.rset),
            ("VRFY", &i.vrfy),
            ("HELP", &i.help),
            ("MAIL", &i.mail),
        ]
        .iter()
        .filter(|(_, r)| r.is_some())
        .map(|(n, _)| *n)
        .collect();
        if i.sequence.is_some() {
            names.push("sequence errors");
        }
        format!("AutoReplies({})", names.join(", "))
    }
}

fn greeting_from_str(kind: Option<&str>) -> PyResult<Option<server::Greeting>> {
    Ok(match kind {
        None => None,
        Some("HELO") => Some(server::Greeting::Helo),
        Some("EHLO") => Some(server::Greeting::Ehlo),
        Some("LHLO") => Some(server::Greeting::Lhlo),
        Some(other) => {
            return Err(PyValueError::new_err(format!(
                "greeting must be HELO, EHLO, LHLO or None, not {other:?}"
            )))
        }
    })
}

/// The server side of one SMTP/LMTP session, without I/O.
#[pyclass(module = "smtprs._core")]
pub struct ServerConnection {
    inner: server::ServerConnection,
}

#[pymethods]
impl ServerConnection {
    #[new]
    #[pyo3(signature = (
        *,
        max_command_line = 512,
        max_text_line = 1000,
        max_message_size = 10_485_760,
        max_header_size = 1_048_576,
        smtputf8 = true,
    ))]
    fn new(
        max_command_line: usize,
        max_text_line: usize,
        max_message_size: u64,
        max_header_size: u64,
        smtputf8: bool,
    ) -> PyResult<Self> {
        if max_command_line < 8 {
            return Err(PyValueError::new_err("max_command_line must be at least 8"));
        }
        if max_text_line < 3 {
            return Err(PyValueError::new_err("max_text_line must be at least 3"));
        }
        let config = server::ServerConfig {
            max_command_line,
            max_text_line,
            max_message_size,
            max_header_size,
            smtputf8,
        };
        Ok(ServerConnection {
            inner: server::ServerConnection::new(config),
        })
    }

    fn receive_data(&mut self, data: &Bound<'_, PyAny>) -> PyResult<()> {
        with_bytes(data, |b| self.inner.receive_data(b))?.map_err(Into::into)
    }

    fn next_event(&mut self, py: Python<'_>) -> PyResult<Option<Py<PyAny>>> {
        let event = if self.inner.next_event_is_heavy() {
            let inner = &mut self.inner;
            py.detach(|| inner.next_event())
        } else {
            self.inner.next_event()
        };
        event.map(|e| event_to_py(py, e)).transpose()
    }

    fn start_data(&mut self) -> PyResult<()> {
        Ok(self.inner.start_data()?)
    }

    fn read_line(&mut self) -> PyResult<()> {
        Ok(self.inner.read_line()?)
    }

    fn discard_buffer(&mut self) -> usize {
        self.inner.discard_buffer()
    }

    fn reset_transaction(&mut self) {
        self.inner.reset_transaction()
    }

    #[getter]
    fn buffered(&self) -> usize {
        self.inner.buffered()
    }

    #[getter]
    fn get_max_message_size(&self) -> u64 {
        self.inner.max_message_size()
    }

    #[setter]
    fn set_max_message_size(&mut self, value: u64) {
        self.inner.set_max_message_size(value)
    }

    #[getter]
    fn in_data(&self) -> bool {
        self.inner.in_data()
    }

    fn set_auto_replies(&mut self, auto: Option<&Bound<'_, AutoReplies>>) {
        self.inner
            .set_auto_replies(auto.map(|a| std::sync::Arc::clone(&a.get().inner)))
    }

    fn write(&mut self, data: &Bound<'_, PyAny>) -> PyResult<()> {
        with_bytes(data, |b| self.inner.write(b))
    }

    fn take_output<'py>(&mut self, py: Python<'py>) -> Bound<'py, PyBytes> {
        let out = self.inner.take_output();
        PyBytes::new(py, &out)
    }

    #[getter]
    fn has_output(&self) -> bool {
        self.inner.has_output()
    }

    #[pyo3(signature = (greeting, name = ""))]
    fn greet(&mut self, greeting: Option<&str>, name: &str) -> PyResult<()> {
        self.inner.greet(greeting_from_str(greeting)?, name);
        Ok(())
    }

    #[getter]
    fn greeting(&self) -> Option<&'static str> {
        self.inner.greeting().map(server::Greeting::as_str)
    }

    #[getter]
    fn helo_name(&self) -> &str {
        self.inner.helo_name()
    }

    fn set_transaction(&mut self, open: bool) {
        self.inner.set_transaction(open)
    }

    fn recipient_accepted(&mut self) {
        self.inner.recipient_accepted()
    }

    #[getter]
    fn content_started(&self) -> bool {
        self.inner.content_started()
    }

    #[getter]
    fn answered(&self) -> u64 {
        self.inner.answered()
    }

    #[getter]
    fn junk(&self) -> u64 {
        self.inner.junk()
    }

    #[setter]
    fn set_junk(&mut self, n: u64) {
        self.inner.set_junk(n)
    }

    #[getter]
    fn errors(&self) -> u64 {
        self.inner.errors()
    }

    #[setter]
    fn set_errors(&mut self, n: u64) {
        self.inner.set_errors(n)
    }

    fn set_mail_auto(&mut self, on: bool) {
        self.inner.set_mail_auto(on)
    }

    #[getter]
    fn mail_pending(&self) -> bool {
        self.inner.mail_pending()
    }

    /// The MAIL the engine accepted by itself, once (None if there is none).
    fn take_mail(&mut self, py: Python<'_>) -> PyResult<Option<Py<Command>>> {
        self.inner
            .take_mail()
            .map(|c| command_to_py(py, c))
            .transpose()
    }

    #[getter]
    fn has_refused(&self) -> bool {
        self.inner.has_refused()
    }

    /// The sequence errors the engine answered since the last call: (verb, which).
    fn take_refused(&mut self) -> Vec<(&'static str, &'static str)> {
        self.inner
            .take_refused()
            .into_iter()
            .map(|(verb, r)| (verb.as_str(), r.as_str()))
            .collect()
    }
}

// ------------------------------------------------------------------ replies

#[pyfunction]
fn format_reply<'py>(
    py: Python<'py>,
    code: i64,
    enhanced: Option<&str>,
    text: &Bound<'py, PyAny>,
) -> PyResult<Bound<'py, PyBytes>> {
    let lines: Vec<String> = if let Ok(s) = text.cast::<PyString>() {
        vec![s.to_str()?.to_owned()]
    } else {
        text.extract()?
    };
    let refs: Vec<&str> = lines.iter().map(String::as_str).collect();
    let code = u16::try_from(code)
        .map_err(|_| PyValueError::new_err(format!("reply code {code} is not within 200..599")))?;
    let out = reply::format_reply(code, enhanced, &refs)?;
    Ok(PyBytes::new(py, &out))
}

/// A reply parsed on the client side.
#[pyclass(frozen, module = "smtprs._core")]
pub struct Reply(reply::Reply);

#[pymethods]
impl Reply {
    #[getter]
    fn code(&self) -> u16 {
        self.0.code
    }
    #[getter]
    fn enhanced(&self) -> Option<&str> {
        self.0.enhanced.as_deref()
    }
    #[getter]
    fn lines<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        PyList::new(py, &self.0.lines)
    }
    #[getter]
    fn text(&self) -> String {
        self.0.text()
    }
    fn __repr__(&self) -> String {
        format!("Reply({:?})", self.0.to_string())
    }
}

/// Incremental parser for server replies.
#[pyclass(module = "smtprs._core")]
pub struct ReplyParser(reply::ReplyParser);

#[pymethods]
impl ReplyParser {
    #[new]
    #[pyo3(signature = (*, max_line = 4096))]
    fn new(max_line: usize) -> Self {
        ReplyParser(reply::ReplyParser::new(max_line))
    }

    fn receive_data(&mut self, data: &Bound<'_, PyAny>) -> PyResult<()> {
        with_bytes(data, |b| self.0.receive_data(b))
    }

    fn next_reply(&mut self) -> PyResult<Option<Reply>> {
        Ok(self.0.next_reply()?.map(Reply))
    }
}

// ------------------------------------------------------------ dot-stuffing

/// Bytes in, bytes out through `f`, with the GIL released for big inputs.
fn transform<'py>(
    data: &Bound<'py, PyAny>,
    f: impl FnOnce(&[u8]) -> Vec<u8> + Send,
) -> PyResult<Bound<'py, PyBytes>> {
    let py = data.py();
    let out = with_bytes(data, |b| maybe_detach(py, b.len(), || f(b)))?;
    Ok(PyBytes::new(py, &out))
}

/// Streaming outbound encoder.
#[pyclass(module = "smtprs._core")]
pub struct DotStuffer(stuff::DotStuffer);

#[pymethods]
impl DotStuffer {
    #[new]
    fn new() -> Self {
        DotStuffer(stuff::DotStuffer::new())
    }

    fn feed<'py>(&mut self, data: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyBytes>> {
        let inner = &mut self.0;
        transform(data, |b| inner.feed(b))
    }

    fn finish<'py>(&mut self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.0.finish())
    }
}

#[pyfunction]
fn dot_stuff<'py>(data: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyBytes>> {
    transform(data, stuff::dot_stuff)
}

#[pyfunction]
fn dot_unstuff<'py>(data: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyBytes>> {
    let py = data.py();
    let out = with_bytes(data, |b| maybe_detach(py, b.len(), || data::unstuff(b)))?
        .map_err(Error::parse)?;
    Ok(PyBytes::new(py, &out))
}

/// Streaming CRLF -> LF conversion.
#[pyclass(module = "smtprs._core")]
pub struct LfConverter(stuff::LfConverter);

#[pymethods]
impl LfConverter {
    #[new]
    fn new() -> Self {
        LfConverter(stuff::LfConverter::new())
    }

    fn feed<'py>(&mut self, data: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyBytes>> {
        let inner = &mut self.0;
        transform(data, |b| inner.feed(b))
    }

    fn finish<'py>(&mut self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.0.finish())
    }
}

// ------------------------------------------------------------------ files

type FileJobArgs<'py> = (
    std::path::PathBuf,
    u64,
    u64,
    Bound<'py, PyBytes>,
    std::path::PathBuf,
    std::path::PathBuf,
    u32,
    Option<(u32, u32)>,
);

/// Batched durable writes for local delivery, with the GIL released (fileio.rs).
#[pyfunction]
#[pyo3(signature = (jobs, *, to_lf = true, fsync = true))]
fn write_files(
    py: Python<'_>,
    jobs: Vec<FileJobArgs<'_>>,
    to_lf: bool,
    fsync: bool,
) -> Vec<Option<(i32, String)>> {
    let jobs: Vec<fileio::FileJob> = jobs
        .into_iter()
        .map(
            |(src, offset, length, head, tmp, dst, mode, owner)| fileio::FileJob {
                src,
                offset,
                length,
                head: head.as_bytes().to_vec(),
                tmp,
                dst,
                mode,
                owner,
            },
        )
        .collect();
    let results = py.detach(|| fileio::write_batch(&jobs, to_lf, fsync));
    results
        .into_iter()
        .map(|r| {
            r.err()
                .map(|e| (e.raw_os_error().unwrap_or(0), e.to_string()))
        })
        .collect()
}

// ------------------------------------------------------------------ module

#[pymodule]
#[pyo3(name = "_core")]
fn core_module(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add("MAX_COMMAND_LINE", server::MAX_COMMAND_LINE)?;
    m.add("MAX_TEXT_LINE", server::MAX_TEXT_LINE)?;
    m.add_class::<PyPath>()?;
    m.add_class::<Command>()?;
    m.add_class::<CommandError>()?;
    m.add_class::<RawLine>()?;
    m.add_class::<DataChunk>()?;
    m.add_class::<BdatChunkEnd>()?;
    m.add_class::<DataEnd>()?;
    m.add_class::<ConnectionClosed>()?;
    m.add_class::<ServerConnection>()?;
    m.add_class::<AutoReplies>()?;
    m.add_class::<Reply>()?;
    m.add_class::<ReplyParser>()?;
    m.add_class::<DotStuffer>()?;
    m.add_class::<LfConverter>()?;
    m.add_function(wrap_pyfunction!(parse_path, m)?)?;
    m.add_function(wrap_pyfunction!(parse_mailbox, m)?)?;
    m.add_function(wrap_pyfunction!(xtext_decode, m)?)?;
    m.add_function(wrap_pyfunction!(xtext_encode, m)?)?;
    m.add_function(wrap_pyfunction!(format_reply, m)?)?;
    m.add_function(wrap_pyfunction!(dot_stuff, m)?)?;
    m.add_function(wrap_pyfunction!(dot_unstuff, m)?)?;
    m.add_function(wrap_pyfunction!(write_files, m)?)?;
    // Event = Command | CommandError | ... (a types.UnionType, as in the stub).
    let mut event = py.get_type::<Command>().into_any();
    for t in [
        py.get_type::<CommandError>(),
        py.get_type::<RawLine>(),
        py.get_type::<DataChunk>(),
        py.get_type::<BdatChunkEnd>(),
        py.get_type::<DataEnd>(),
        py.get_type::<ConnectionClosed>(),
    ] {
        event = event.bitor(t)?;
    }
    m.add("Event", event)?;
    Ok(())
}
