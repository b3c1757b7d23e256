//! The one error type of the core, and its one conversion to Python.
//!
//! Parsers return [`Error`]; the binding turns it into the exception classes
//! that `smtprs.errors` defines (Python owns the hierarchy and its docs), or
//! into `ValueError` / `RuntimeError` for misuse by the caller.

use std::fmt;

use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyType;

/// Everything that can go wrong in the core, with the SMTP reply it maps to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// Input that breaks the protocol grammar (`smtprs.errors.ParseError`).
    Parse {
        message: String,
        code: u16,
        enhanced: &'static str,
    },
    /// A path or mailbox that breaks RFC 5321 4.1.2 (`smtprs.errors.AddressError`).
    Address {
        message: String,
        code: u16,
        enhanced: &'static str,
    },
    /// A bad argument from our own caller (`ValueError`).
    Value(String),
    /// A method called in a state where it makes no sense (`RuntimeError`).
    State(String),
}

impl Error {
    /// A grammar error answered with 501 5.5.4.
    pub fn parse(message: impl Into<String>) -> Error {
        Error::Parse {
            message: message.into(),
            code: 501,
            enhanced: "5.5.4",
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Parse { message, .. } | Error::Address { message, .. } => f.write_str(message),
            Error::Value(m) | Error::State(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for Error {}

static PARSE_ERROR: PyOnceLock<Py<PyType>> = PyOnceLock::new();
static ADDRESS_ERROR: PyOnceLock<Py<PyType>> = PyOnceLock::new();

fn raise(
    py: Python<'_>,
    cell: &'static PyOnceLock<Py<PyType>>,
    name: &str,
    message: String,
    code: u16,
    enhanced: &str,
) -> PyErr {
    match cell.import(py, "smtprs.errors", name) {
        Ok(cls) => match cls.call1((message, code, enhanced)) {
            Ok(exc) => PyErr::from_value(exc),
            Err(e) => e,
        },
        Err(e) => e,
    }
}

impl From<Error> for PyErr {
    fn from(err: Error) -> PyErr {
        match err {
            Error::Parse {
                message,
                code,
                enhanced,
            } => {
                Python::attach(|py| raise(py, &PARSE_ERROR, "ParseError", message, code, enhanced))
            }
            Error::Address {
                message,
                code,
                enhanced,
            } => Python::attach(|py| {
                raise(py, &ADDRESS_ERROR, "AddressError", message, code, enhanced)
            }),
            Error::Value(m) => PyValueError::new_err(m),
            Error::State(m) => PyRuntimeError::new_err(m),
        }
    }
}
