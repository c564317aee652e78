//! Error text for people: an error with its causes.

use std::error::Error;

/// An error with its causes, each said once (see [`pikett_support::error_chain`]).
pub fn error_chain(e: &(dyn Error + 'static)) -> String {
    pikett_support::error_chain(e)
}
