//! The few helpers every pikett program needs at its edges, kept once.
//!
//! - [`line_column`], [`toml_position`] — where in a config file an error is, for messages
//!   of the form `FILE:LINE:COLUMN: problem`.
//! - [`wait_for_signal`] — the shutdown signal of a service (SIGTERM from systemd, SIGINT
//!   from a terminal).
//! - [`service`] — log format, readiness, status and the watchdog towards systemd.

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
    fn toml_errors_are_located() {
        let text = "a = 1\nb = = 2\n";
        let e = toml::from_str::<toml::Table>(text).unwrap_err();
        assert_eq!(toml_position(text, &e).0, 2);
    }
}
