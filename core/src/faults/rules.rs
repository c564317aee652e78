//! Collector-side `[[rules]]` on samples: matching, comparison and the synthetic check they feed.
//!
//! ```toml
//! [[rules]]
//! name = "cpu-hot"
//! metric = "pikett_redfish_temperature_celsius"
//! labels = { sensor = "CPU1 Temp", site = { op = "!=", value = "lab" } }
//! op = ">"                 # >  >=  <  <=  ==  !=
//! threshold = 85.0
//! for = "5m"               # the condition must hold this long (default 0s)
//! severity = "critical"    # warning | critical (default warning)
//! summary = "{{label:sensor}} at {{value}} Cel (limit {{threshold}})"   # optional
//! ```
//!
//! Label matchers are deliberately simple: `name = "v"` (equality) or
//! `name = { op = "=" | "!=", value = "v" }`; no regular expressions. As in Prometheus, a label
//! the sample lacks has the value `""`, so `!= "lab"` also matches samples without the label.
//! A sample whose value is NaN is ignored by rules (it neither fires nor clears).
//!
//! Each distinct label set of a matching series is its own check, named by [`check_name`]:
//! `rule/<name>` followed by the labels in Prometheus form, e.g. `rule/cpu-hot{sensor="CPU1
//! Temp"}` (just `rule/<name>` when the sample has no labels). Its state is OK until the
//! condition has held continuously for `for`, then the rule's severity; it is OK again as soon
//! as the condition is false.
//!
//! Summary placeholders: `{{value}}`, `{{threshold}}`, `{{op}}`, `{{metric}}`, `{{rule}}`,
//! `{{host}}`, `{{labels}}`, `{{label:NAME}}`; others are left as written.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde::de::{self, MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};

use super::types::{ConfigError, Severity};

/// One `[[rules]]` entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    pub name: String,
    pub metric: String,
    #[serde(default)]
    pub labels: BTreeMap<String, LabelMatcher>,
    pub op: CompareOp,
    pub threshold: f64,
    #[serde(rename = "for", default, with = "humantime_serde")]
    pub for_duration: Duration,
    #[serde(default)]
    pub severity: Severity,
    #[serde(default)]
    pub summary: Option<String>,
}

/// Where a rule's `for` clock started, per host and label set.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct RuleKey {
    pub rule: String,
    pub host: String,
    pub labels: BTreeMap<String, String>,
}

/// A comparison of the sample's value (left) with the threshold (right).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum CompareOp {
    #[serde(rename = ">")]
    Gt,
    #[serde(rename = ">=")]
    Ge,
    #[serde(rename = "<")]
    Lt,
    #[serde(rename = "<=")]
    Le,
    #[serde(rename = "==")]
    Eq,
    #[serde(rename = "!=")]
    Ne,
}

impl CompareOp {
    pub fn as_str(self) -> &'static str {
        match self {
            CompareOp::Gt => ">",
            CompareOp::Ge => ">=",
            CompareOp::Lt => "<",
            CompareOp::Le => "<=",
            CompareOp::Eq => "==",
            CompareOp::Ne => "!=",
        }
    }

    /// `value op threshold`.
    pub fn holds(self, value: f64, threshold: f64) -> bool {
        match self {
            CompareOp::Gt => value > threshold,
            CompareOp::Ge => value >= threshold,
            CompareOp::Lt => value < threshold,
            CompareOp::Le => value <= threshold,
            CompareOp::Eq => value == threshold,
            CompareOp::Ne => value != threshold,
        }
    }
}

/// Equality or inequality of a label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum MatchOp {
    #[serde(rename = "=")]
    Eq,
    #[serde(rename = "!=")]
    Ne,
}

/// A label matcher: `"v"` or `{ op = "=" | "!=", value = "v" }` in TOML.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct LabelMatcher {
    pub op: MatchOp,
    pub value: String,
}

impl LabelMatcher {
    /// Whether a label with this value (`None`: absent, treated as `""`) matches.
    pub fn matches(&self, value: Option<&str>) -> bool {
        let v = value.unwrap_or("");
        match self.op {
            MatchOp::Eq => v == self.value,
            MatchOp::Ne => v != self.value,
        }
    }
}

impl<'de> Deserialize<'de> for LabelMatcher {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = LabelMatcher;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str(r#"a label value "v" or { op = "=" | "!=", value = "v" }"#)
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<LabelMatcher, E> {
                Ok(LabelMatcher { op: MatchOp::Eq, value: v.to_string() })
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<LabelMatcher, A::Error> {
                let mut op = None;
                let mut value = None;
                while let Some(key) = map.next_key::<String>()? {
                    match key.as_str() {
                        "op" => op = Some(map.next_value::<MatchOp>()?),
                        "value" => value = Some(map.next_value::<String>()?),
                        other => return Err(de::Error::unknown_field(other, &["op", "value"])),
                    }
                }
                Ok(LabelMatcher {
                    op: op.unwrap_or(MatchOp::Eq),
                    value: value.ok_or_else(|| de::Error::missing_field("value"))?,
                })
            }
        }
        d.deserialize_any(V)
    }
}

impl Rule {
    /// Checks what serde cannot; `index` is the rule's position in `[[rules]]`.
    pub fn validate(&self, index: usize) -> Result<(), ConfigError> {
        let bad = |field: &str, reason: String| ConfigError::Invalid { key: format!("rules[{index}].{field}"), reason };
        if self.name.trim().is_empty() {
            return Err(bad("name", "must not be empty".into()));
        }
        // The name becomes part of a check path and of the label form `rule/<name>{...}`.
        if self.name.chars().any(|c| c.is_control() || "{}\"".contains(c)) {
            return Err(bad("name", format!("{:?}: no braces, quotes or control characters", self.name)));
        }
        if self.metric.trim().is_empty() {
            return Err(bad("metric", format!("rule {:?}: must not be empty", self.name)));
        }
        if !self.threshold.is_finite() {
            return Err(bad("threshold", format!("rule {:?}: must be a finite number", self.name)));
        }
        Ok(())
    }

    /// Whether the sample belongs to this rule (metric name and every label matcher).
    pub fn selects(&self, metric: &str, labels: &BTreeMap<String, String>) -> bool {
        self.selects_with(metric, |k| labels.get(k).map(String::as_str))
    }

    /// [`Rule::selects`] over any label lookup (the hot path avoids building a map).
    pub fn selects_with<'a>(&self, metric: &str, label: impl Fn(&str) -> Option<&'a str>) -> bool {
        self.metric == metric && self.labels.iter().all(|(k, m)| m.matches(label(k)))
    }

    /// The condition on a value: `None` for NaN (ignored).
    pub fn condition(&self, value: f64) -> Option<bool> {
        (!value.is_nan()).then(|| self.op.holds(value, self.threshold))
    }

    /// The summary of a result of this rule's synthetic check.
    pub fn summary(&self, host: &str, labels: &BTreeMap<String, String>, value: f64, firing: bool) -> String {
        let series = format!("{}{}", self.metric, label_form(labels));
        match (&self.summary, firing) {
            (Some(template), true) => render(template, self, host, labels, value),
            (None, true) => format!("{series} = {value} {} {}", self.op.as_str(), self.threshold),
            (_, false) => format!("{series} = {value} (fires when {} {})", self.op.as_str(), self.threshold),
        }
    }
}

/// The synthetic check name of a rule for one label set.
pub fn check_name(rule: &str, labels: &BTreeMap<String, String>) -> String {
    format!("rule/{rule}{}", label_form(labels))
}

/// `{a="1",b="x \"y\""}`, or `""` for no labels (Prometheus' form, quotes and backslashes
/// escaped so label sets never collide).
pub fn label_form(labels: &BTreeMap<String, String>) -> String {
    if labels.is_empty() {
        return String::new();
    }
    let inner: Vec<String> = labels
        .iter()
        .map(|(k, v)| {
            let v = v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n");
            format!("{k}=\"{v}\"")
        })
        .collect();
    format!("{{{}}}", inner.join(","))
}

fn render(template: &str, rule: &Rule, host: &str, labels: &BTreeMap<String, String>, value: f64) -> String {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find("}}") else {
            out.push_str(&rest[start..]);
            return out;
        };
        let name = after[..end].trim();
        let replaced = match name {
            "value" => Some(value.to_string()),
            "threshold" => Some(rule.threshold.to_string()),
            "op" => Some(rule.op.as_str().to_string()),
            "metric" => Some(rule.metric.clone()),
            "rule" => Some(rule.name.clone()),
            "host" => Some(host.to_string()),
            "labels" => Some(label_form(labels)),
            _ => name.strip_prefix("label:").map(|l| labels.get(l.trim()).cloned().unwrap_or_default()),
        };
        match replaced {
            Some(text) => out.push_str(&text),
            None => out.push_str(&rest[start..start + 2 + end + 2]),
        }
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn rules(toml_text: &str) -> Vec<Rule> {
        #[derive(Deserialize)]
        struct File {
            rules: Vec<Rule>,
        }
        toml::from_str::<File>(toml_text).unwrap().rules
    }

    #[test]
    fn rule_parses_with_both_matcher_forms_and_defaults() {
        let r = rules(
            r#"
[[rules]]
name = "cpu-hot"
metric = "temp"
labels = { sensor = "CPU1 Temp", site = { op = "!=", value = "lab" } }
op = ">="
threshold = 85
"#,
        );
        let r = &r[0];
        assert_eq!(r.op, CompareOp::Ge);
        assert_eq!(r.for_duration, Duration::ZERO);
        assert_eq!(r.severity, Severity::Warning);
        assert_eq!(r.labels["sensor"].op, MatchOp::Eq);
        assert_eq!(r.labels["site"].op, MatchOp::Ne);
        assert_eq!(r.labels["site"].value, "lab");
    }

    #[test]
    fn rule_with_unknown_key_is_rejected_naming_it() {
        #[derive(Debug, Deserialize)]
        #[allow(dead_code)]
        struct File {
            rules: Vec<Rule>,
        }
        let err =
            toml::from_str::<File>("[[rules]]\nname='a'\nmetric='m'\nop='>'\nthreshold=1\nthresold=2\n").unwrap_err();
        assert!(err.to_string().contains("thresold"), "{err}");
        let err = toml::from_str::<File>("[[rules]]\nname='a'\nmetric='m'\nop='=>'\nthreshold=1\n").unwrap_err();
        assert!(err.to_string().contains("=>"), "{err}");
        let err = toml::from_str::<File>(
            "[[rules]]\nname='a'\nmetric='m'\nop='>'\nthreshold=1\nlabels={a={op='=',vlue='x'}}\n",
        )
        .unwrap_err();
        assert!(err.to_string().contains("vlue"), "{err}");
    }

    #[test]
    fn matchers_treat_a_missing_label_as_empty() {
        let r =
            &rules("[[rules]]\nname='a'\nmetric='m'\nop='>'\nthreshold=1\nlabels={site={op='!=',value='lab'}}\n")[0];
        assert!(r.selects("m", &labels(&[])));
        assert!(r.selects("m", &labels(&[("site", "fra")])));
        assert!(!r.selects("m", &labels(&[("site", "lab")])));
        assert!(!r.selects("other", &labels(&[])));
    }

    #[test]
    fn every_comparison_holds_as_written() {
        assert!(CompareOp::Gt.holds(2.0, 1.0) && !CompareOp::Gt.holds(1.0, 1.0));
        assert!(CompareOp::Ge.holds(1.0, 1.0) && !CompareOp::Ge.holds(0.5, 1.0));
        assert!(CompareOp::Lt.holds(0.0, 1.0) && !CompareOp::Lt.holds(1.0, 1.0));
        assert!(CompareOp::Le.holds(1.0, 1.0) && !CompareOp::Le.holds(1.5, 1.0));
        assert!(CompareOp::Eq.holds(1.0, 1.0) && !CompareOp::Eq.holds(1.5, 1.0));
        assert!(CompareOp::Ne.holds(1.5, 1.0) && !CompareOp::Ne.holds(1.0, 1.0));
    }

    #[test]
    fn nan_is_ignored_not_compared() {
        let r = &rules("[[rules]]\nname='a'\nmetric='m'\nop='!='\nthreshold=1\n")[0];
        assert_eq!(r.condition(f64::NAN), None);
        assert_eq!(r.condition(2.0), Some(true));
    }

    #[test]
    fn check_name_is_prometheus_form_and_escapes_quotes() {
        assert_eq!(check_name("hot", &labels(&[])), "rule/hot");
        assert_eq!(
            check_name("hot", &labels(&[("sensor", "CPU1 Temp"), ("a", "x\"y")])),
            r#"rule/hot{a="x\"y",sensor="CPU1 Temp"}"#
        );
    }

    #[test]
    fn summary_template_fills_placeholders_and_keeps_unknown_ones() {
        let mut r = rules("[[rules]]\nname='hot'\nmetric='temp'\nop='>'\nthreshold=85\n").remove(0);
        r.summary = Some("{{label:sensor}} on {{host}}: {{value}} {{op}} {{threshold}} {{nope}}".into());
        let s = r.summary("web-1", &labels(&[("sensor", "CPU1")]), 91.5, true);
        assert_eq!(s, "CPU1 on web-1: 91.5 > 85 {{nope}}");
        let ok = r.summary("web-1", &labels(&[("sensor", "CPU1")]), 40.0, false);
        assert_eq!(ok, r#"temp{sensor="CPU1"} = 40 (fires when > 85)"#);
    }

    #[test]
    fn invalid_rules_are_rejected_naming_the_key() {
        let mut r = rules("[[rules]]\nname='a'\nmetric='m'\nop='>'\nthreshold=1\n").remove(0);
        r.threshold = f64::INFINITY;
        assert!(r.validate(3).unwrap_err().to_string().contains("rules[3].threshold"));
        r.threshold = 1.0;
        r.name = "a{b".into();
        assert!(r.validate(0).unwrap_err().to_string().contains("rules[0].name"));
    }
}
