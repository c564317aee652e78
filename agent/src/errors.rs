//! Error text for people: an error with its causes.

use std::error::Error;

/// An error with its causes, e.g. `error sending request: client error (Connect): tcp
/// connect error: Connection refused` — top-level messages of reqwest, tonic and rustls
/// are vague; the sources say why. Causes whose text a layer already repeats are skipped.
pub fn error_chain(e: &dyn Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !s.contains(&text) {
            s.push_str(": ");
            s.push_str(&text);
        }
        source = cause.source();
    }
    s
}
