//! Voice call-outs through one HTTP gateway (the fallback when SMS fails); same request
//! machinery as SMS, one URL.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use async_trait::async_trait;
use serde::Deserialize;

use super::http::{self, BodyTemplate, HeaderTemplates};
use super::sms::{default_body, default_timeout};
use super::{Channel, ChannelError, ChannelKind, ConfigError, Notification, Receipt};

/// `[channels.voice]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VoiceConfig {
    pub url: String,
    /// Request body template; default `{"to": "{{to}}", "text": "{{text}}"}`.
    #[serde(default = "default_body")]
    pub body: String,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    #[serde(default)]
    pub content_type: Option<String>,
    /// Extra trusted CA certificates (PEM) for a gateway with an internal certificate; the
    /// system's trust store stays in use.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
}

impl VoiceConfig {
    pub fn new(url: impl Into<String>) -> Self {
        VoiceConfig {
            url: url.into(),
            body: default_body(),
            headers: BTreeMap::new(),
            ca_file: None,
            content_type: None,
            timeout: default_timeout(),
        }
    }
}

pub struct VoiceChannel {
    url: String,
    body: BodyTemplate,
    headers: HeaderTemplates,
    client: reqwest::Client,
}

impl VoiceChannel {
    pub fn new(cfg: VoiceConfig) -> Result<Self, ConfigError> {
        let kind = ChannelKind::Voice;
        http::check_url(kind, "url", &cfg.url)?;
        Ok(VoiceChannel {
            body: BodyTemplate::parse(kind, &cfg.body, cfg.content_type.as_deref())?,
            headers: HeaderTemplates::parse(kind, &cfg.headers)?,
            client: http::client(kind, cfg.timeout, cfg.ca_file.as_deref())?,
            url: cfg.url,
        })
    }
}

#[async_trait]
impl Channel for VoiceChannel {
    fn kind(&self) -> ChannelKind {
        ChannelKind::Voice
    }

    async fn send(&self, n: &Notification) -> Result<Receipt, ChannelError> {
        let (body, content_type) = self.body.render(n)?;
        let headers = self.headers.render(n)?;
        http::post(&self.client, ChannelKind::Voice, &self.url, headers, body, content_type).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_from_toml() {
        let cfg: VoiceConfig = toml::from_str(
            r#"url = "https://voice.example.net/call"
               body = '{"to": "{{to}}", "text": "{{text}}"}'
               timeout = "20s""#,
        )
        .unwrap();
        assert_eq!(cfg.timeout, Duration::from_secs(20));
        assert!(VoiceChannel::new(cfg).is_ok());
    }

    #[test]
    fn bad_body_template_names_the_channel() {
        let mut cfg = VoiceConfig::new("https://voice.example.net/call");
        cfg.body = "{{nope}}".into();
        let err = VoiceChannel::new(cfg).err().unwrap();
        assert!(err.to_string().starts_with("[channels.voice] body"), "{err}");
    }
}
