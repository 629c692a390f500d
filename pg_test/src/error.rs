//! One boxed error type for the whole harness: any error converts into it with `?`, and a plain message
//! converts with `.into()` or [`err`].

/// Any error the harness reports.
pub type Error = Box<dyn std::error::Error + Send + Sync + 'static>;

/// The harness' result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// An [`Error`] carrying `msg`.
pub(crate) fn err(msg: impl Into<String>) -> Error {
    msg.into().into()
}
