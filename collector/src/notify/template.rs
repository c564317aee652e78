//! `{{name}}` templates for gateway bodies and headers, with `{{secret:/path}}` read from files.
//!
//! Variables: `to`, `text`, `subject`, `host`, `check`, `severity`, `summary`, `customer`,
//! `fault_id`, `id` (the idempotency key), `kind`, `channel`. `{{secret:/etc/pikett/sms.token}}`
//! is the file's content, trimmed; it is read at every render (so a rotated token is picked up)
//! and never logged. Values are JSON-escaped when the template is a JSON body.

use std::path::{Path, PathBuf};

use super::Notification;

/// The variables a template may use.
pub const VARIABLES: &[&str] =
    &["to", "text", "subject", "host", "check", "severity", "summary", "customer", "fault_id", "id", "kind", "channel"];

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Literal(String),
    Var(&'static str),
    Secret(PathBuf),
}

/// A parsed template; parse once at config load, render per notification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    parts: Vec<Part>,
}

/// How substituted values are escaped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Escape {
    /// As is (headers, plain-text bodies).
    None,
    /// Escaped for the inside of a JSON string (`"` → `\"`, newlines → `\n`, ...).
    Json,
    /// Percent-encoded as one URL component (every byte but `A-Z a-z 0-9 - . _ ~`).
    Url,
}

#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    #[error("template has an unclosed '{{{{' at byte {0}")]
    Unclosed(usize),
    #[error("template uses unknown variable '{{{{{name}}}}}' (known: {known}, secret:/path)")]
    UnknownVariable { name: String, known: String },
    #[error("template has '{{{{secret:}}}}' without a file path")]
    EmptySecretPath,
    #[error("cannot read secret file {}: {source}", path.display())]
    SecretUnreadable { path: PathBuf, source: std::io::Error },
    #[error("secret file {} is empty", path.display())]
    SecretEmpty { path: PathBuf },
    #[error("secret file {} is readable by everyone; restrict it (chmod o-rwx)", path.display())]
    SecretWorldReadable { path: PathBuf },
}

impl Template {
    pub fn parse(s: &str) -> Result<Template, TemplateError> {
        Template::parse_with(s, &[])
    }

    /// [`Template::parse`] admitting `extra` variable names as well (e.g. `message_id` in a
    /// delivery-receipt status URL); their values are given to [`Template::render_with`].
    pub fn parse_with(s: &str, extra: &[&'static str]) -> Result<Template, TemplateError> {
        let mut parts = Vec::new();
        let mut rest = s;
        let mut offset = 0;
        while let Some(start) = rest.find("{{") {
            if start > 0 {
                parts.push(Part::Literal(rest[..start].to_string()));
            }
            let after = &rest[start + 2..];
            let end = after.find("}}").ok_or(TemplateError::Unclosed(offset + start))?;
            let name = after[..end].trim();
            if let Some(path) = name.strip_prefix("secret:") {
                let path = path.trim();
                if path.is_empty() {
                    return Err(TemplateError::EmptySecretPath);
                }
                parts.push(Part::Secret(PathBuf::from(path)));
            } else {
                let var = VARIABLES.iter().chain(extra).find(|v| **v == name).ok_or_else(|| {
                    TemplateError::UnknownVariable {
                        name: name.to_string(),
                        known: VARIABLES.iter().chain(extra).copied().collect::<Vec<_>>().join(", "),
                    }
                })?;
                parts.push(Part::Var(var));
            }
            let consumed = start + 2 + end + 2;
            offset += consumed;
            rest = &rest[consumed..];
        }
        if !rest.is_empty() {
            parts.push(Part::Literal(rest.to_string()));
        }
        Ok(Template { parts })
    }

    /// The secret files this template reads (to check them at startup).
    pub fn secret_files(&self) -> impl Iterator<Item = &Path> {
        self.parts.iter().filter_map(|p| match p {
            Part::Secret(path) => Some(path.as_path()),
            _ => None,
        })
    }

    /// Reads every secret once: a missing or empty file is a config error at startup.
    pub fn check_secrets(&self) -> Result<(), TemplateError> {
        for path in self.secret_files() {
            read_secret(path)?;
        }
        Ok(())
    }

    pub fn render(&self, n: &Notification, escape: Escape) -> Result<String, TemplateError> {
        self.render_with(n, &[], escape)
    }

    /// [`Template::render`] with the values of the extra variables of [`Template::parse_with`].
    pub fn render_with(
        &self,
        n: &Notification,
        extra: &[(&str, &str)],
        escape: Escape,
    ) -> Result<String, TemplateError> {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Literal(s) => out.push_str(s),
                Part::Var(name) => {
                    let value = match extra.iter().find(|(k, _)| k == name) {
                        Some((_, v)) => (*v).to_string(),
                        None => variable(n, name),
                    };
                    push_escaped(&mut out, &value, escape)
                }
                Part::Secret(path) => push_escaped(&mut out, &read_secret(path)?, escape),
            }
        }
        Ok(out)
    }
}

fn variable(n: &Notification, name: &str) -> String {
    match name {
        "to" => n.to.clone(),
        "text" => n.effective_text(),
        "subject" => n.effective_subject(),
        "host" => n.host.clone(),
        "check" => n.check.clone(),
        "severity" => n.severity.clone(),
        "summary" => n.summary.clone(),
        "customer" => n.customer.clone(),
        "fault_id" => n.fault_id.clone(),
        "id" => n.id.clone(),
        "kind" => n.kind.as_str().to_string(),
        "channel" => n.channel.as_str().to_string(),
        // parse() only admits names from VARIABLES, all handled above.
        _ => String::new(),
    }
}

fn push_escaped(out: &mut String, value: &str, escape: Escape) {
    match escape {
        Escape::None => out.push_str(value),
        Escape::Json => {
            let quoted = serde_json::Value::String(value.to_string()).to_string();
            // A JSON string literal always starts and ends with '"'.
            out.push_str(&quoted[1..quoted.len() - 1]);
        }
        Escape::Url => {
            for b in value.bytes() {
                if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
                    out.push(char::from(b));
                } else {
                    out.push_str(&format!("%{b:02X}"));
                }
            }
        }
    }
}

/// A secret file's content, trimmed. The error names the file, never the content. A file
/// anyone may read is refused (secrets must not be world-readable; docs/configuration.md,
/// `[channels]`).
pub fn read_secret(path: &Path) -> Result<String, TemplateError> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let meta = std::fs::metadata(path)
            .map_err(|source| TemplateError::SecretUnreadable { path: path.to_path_buf(), source })?;
        if meta.permissions().mode() & 0o004 != 0 {
            return Err(TemplateError::SecretWorldReadable { path: path.to_path_buf() });
        }
    }
    let raw = std::fs::read_to_string(path)
        .map_err(|source| TemplateError::SecretUnreadable { path: path.to_path_buf(), source })?;
    let trimmed = raw.trim();
    if trimmed.is_empty() {
        return Err(TemplateError::SecretEmpty { path: path.to_path_buf() });
    }
    Ok(trimmed.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::notify::sample_notification;

    #[test]
    fn spec_sms_body_renders_valid_json_with_escaped_values() {
        let t = Template::parse(r#"{"to": "{{to}}", "text": "{{text}}"}"#).unwrap();
        let mut n = sample_notification();
        n.text = "line \"one\"\nline two \\ end".into();
        let body = t.render(&n, Escape::Json).unwrap();
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["to"], "+4915100000001");
        assert_eq!(v["text"], "line \"one\"\nline two \\ end");
    }

    #[test]
    fn every_variable_renders() {
        let t = Template::parse(
            "{{to}}|{{host}}|{{check}}|{{severity}}|{{summary}}|{{fault_id}}|{{customer}}|{{id}}|{{kind}}|{{channel}}",
        )
        .unwrap();
        let n = sample_notification();
        assert_eq!(
            t.render(&n, Escape::None).unwrap(),
            "+4915100000001|web1|http/shop-frontend|critical|HTTP 500 Internal Server Error|F42|acme|F42-primary-alice-sms-0|alarm|sms"
        );
    }

    #[test]
    fn spaces_inside_braces_are_allowed() {
        let t = Template::parse("a {{ host }} b").unwrap();
        assert_eq!(t.render(&sample_notification(), Escape::None).unwrap(), "a web1 b");
    }

    #[test]
    fn unknown_variable_is_named() {
        let err = Template::parse("{{hots}}").unwrap_err();
        assert!(err.to_string().contains("'{{hots}}'"), "{err}");
    }

    #[test]
    fn unclosed_braces_are_rejected() {
        assert!(matches!(Template::parse("x {{to"), Err(TemplateError::Unclosed(2))));
    }

    #[test]
    fn secret_is_read_trimmed_and_json_escaped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sms.token");
        write_private(&path, "  s3cr\"et\n");
        let t = Template::parse(&format!("Bearer {{{{secret:{}}}}}", path.display())).unwrap();
        assert_eq!(t.secret_files().count(), 1);
        let n = sample_notification();
        assert_eq!(t.render(&n, Escape::None).unwrap(), "Bearer s3cr\"et");
        assert_eq!(t.render(&n, Escape::Json).unwrap(), "Bearer s3cr\\\"et");
    }

    fn write_private(path: &Path, content: &str) {
        use std::os::unix::fs::PermissionsExt;
        std::fs::write(path, content).unwrap();
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
    }

    #[test]
    fn world_readable_secret_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sms.token");
        std::fs::write(&path, "hunter2").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = read_secret(&path).unwrap_err().to_string();
        assert!(err.contains("sms.token") && err.contains("readable by everyone"), "{err}");
        assert!(!err.contains("hunter2"), "{err}");
    }

    #[test]
    fn missing_secret_names_the_file() {
        let t = Template::parse("{{secret:/nonexistent/pikett/sms.token}}").unwrap();
        let err = t.check_secrets().unwrap_err();
        assert!(err.to_string().contains("/nonexistent/pikett/sms.token"), "{err}");
    }

    #[test]
    fn empty_secret_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("empty");
        write_private(&path, "\n");
        let t = Template::parse(&format!("{{{{secret:{}}}}}", path.display())).unwrap();
        assert!(matches!(t.check_secrets(), Err(TemplateError::SecretEmpty { .. })));
    }

    #[test]
    fn extra_variables_render_url_escaped_and_stay_unknown_elsewhere() {
        let t = Template::parse_with("https://gw.example/status/{{message_id}}?to={{to}}", &["message_id"]).unwrap();
        let url = t.render_with(&sample_notification(), &[("message_id", "a/b c")], Escape::Url).unwrap();
        assert_eq!(url, "https://gw.example/status/a%2Fb%20c?to=%2B4915100000001");
        let err = Template::parse("{{message_id}}").unwrap_err();
        assert!(err.to_string().contains("'{{message_id}}'"), "{err}");
    }

    #[test]
    fn literal_text_without_variables_is_kept() {
        let t = Template::parse("plain } { text").unwrap();
        assert_eq!(t.render(&sample_notification(), Escape::Json).unwrap(), "plain } { text");
    }
}
