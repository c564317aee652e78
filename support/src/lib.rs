//! The few helpers every pikett program needs at its edges, kept once.
//!
//! - [`line_column`], [`toml_position`] — where in a config file an error is, for messages
//!   of the form `FILE:LINE:COLUMN: problem`.
//! - [`wait_for_signal`] — the shutdown signal of a service (SIGTERM from systemd, SIGINT
//!   from a terminal).
//! - [`service`] — log format, readiness, status and the watchdog towards systemd.
//! - [`generate`] — shell completions and man pages from a program's CLI definition.

pub mod generate;
pub mod service;

/// 1-based line and column (in characters) of a byte offset in `text`.
pub fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

/// Line and column where a TOML parse error starts; (0, 0) when it has no position.
pub fn toml_position(text: &str, e: &toml::de::Error) -> (usize, usize) {
    e.span().map_or((0, 0), |span| line_column(text, span.start))
}

/// An error with its causes, for people: `error sending request: client error (Connect):
/// tcp connect error: Connection refused`. Top-level messages of reqwest, tonic and rustls
/// are vague and the sources say why; a cause whose text is already said (layers often
/// repeat their source's message) is skipped, so nothing reads twice.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !text.is_empty() && !s.contains(&text) {
            s.push_str(": ");
            s.push_str(&text);
        }
        source = cause.source();
    }
    s
}

/// Waits for SIGTERM or SIGINT. If the handlers cannot be installed, waits forever (the
/// process is then stopped by SIGKILL, as it would be without handlers).
pub async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
        std::future::pending::<()>().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_are_one_based_and_count_characters() {
        let text = "a = 1\nüber = x\n";
        assert_eq!(line_column(text, 0), (1, 1));
        assert_eq!(line_column(text, 6), (2, 1));
        // 'x' after "über = ": 7 characters in, though 8 bytes.
        assert_eq!(line_column(text, text.find('x').unwrap()), (2, 8));
        // Past the end, and inside a multi-byte character, stay in range.
        assert_eq!(line_column(text, 1000), (3, 1));
        assert_eq!(line_column(text, 7), (2, 1));
    }

    #[test]
    fn an_error_chain_says_each_cause_once() {
        #[derive(Debug)]
        struct E(&'static str, Option<Box<E>>);
        impl std::fmt::Display for E {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.0)
            }
        }
        impl std::error::Error for E {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                self.1.as_deref().map(|e| e as _)
            }
        }
        let inner = E("Connection refused", None);
        let repeated = E("tcp connect error", Some(Box::new(inner)));
        let top = E("tcp connect error", Some(Box::new(repeated)));
        assert_eq!(error_chain(&top), "tcp connect error: Connection refused");
        let url = E("invalid URL, scheme is missing", Some(Box::new(E("invalid URL, scheme is missing", None))));
        assert_eq!(error_chain(&url), "invalid URL, scheme is missing");
    }

    #[test]
    fn toml_errors_are_located() {
        let text = "a = 1\nb = = 2\n";
        let e = toml::from_str::<toml::Table>(text).unwrap_err();
        assert_eq!(toml_position(text, &e).0, 2);
    }
}
