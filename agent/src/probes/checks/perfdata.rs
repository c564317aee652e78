//! Parses Nagios plugin output: summary line, long output, perfdata and threshold ranges.
//!
//! Follows the Monitoring Plugins Development Guidelines
//! (<https://www.monitoring-plugins.org/doc/guidelines.html>, "Plugin Output" and
//! "Performance data"). Everything here is pure: plain data in, plain data out.

use std::fmt;

use crate::observation::State;

/// What a plugin printed, split into its parts.
#[derive(Debug, Clone, PartialEq)]
pub struct PluginOutput {
    /// The first line, before any `|`, trimmed.
    pub summary: String,
    /// The lines after the first, up to the `|` that starts their perfdata.
    pub long_output: Vec<String>,
    /// Parsed perfdata items, in output order.
    pub perfdata: Vec<PerfDatum>,
    /// Perfdata items that could not be parsed (the item text and why).
    pub perf_errors: Vec<PerfError>,
}

/// Splits plugin stdout into summary, long output and perfdata.
///
/// Layout per the guidelines:
/// `TEXT | PERFDATA\nLONG TEXT...\nLONG TEXT | PERFDATA 2\nPERFDATA 3\n...`
/// — perfdata is the first line's text after `|`, plus everything after the first
/// `|` on a later line (that line's rest and all following lines).
pub fn parse_plugin_output(stdout: &str) -> PluginOutput {
    let mut lines = stdout.lines();
    let first = lines.next().unwrap_or("");
    let (summary, mut perf_text) = match first.split_once('|') {
        Some((text, perf)) => (text.trim().to_string(), perf.to_string()),
        None => (first.trim().to_string(), String::new()),
    };
    let mut long_output = Vec::new();
    let mut in_perf = false;
    for line in lines {
        if in_perf {
            perf_text.push(' ');
            perf_text.push_str(line);
        } else if let Some((text, perf)) = line.split_once('|') {
            if !text.trim().is_empty() {
                long_output.push(text.trim_end().to_string());
            }
            perf_text.push(' ');
            perf_text.push_str(perf);
            in_perf = true;
        } else {
            long_output.push(line.trim_end().to_string());
        }
    }
    let (perfdata, perf_errors) = parse_perfdata(&perf_text);
    PluginOutput { summary, long_output, perfdata, perf_errors }
}

/// One perfdata item: `'label'=value[UOM];[warn];[crit];[min];[max]`.
#[derive(Debug, Clone, PartialEq)]
pub struct PerfDatum {
    pub label: String,
    /// `None` when the plugin printed `U` (value could not be determined).
    pub value: Option<f64>,
    /// The unit of measurement as printed (`s`, `ms`, `%`, `KB`, `c`, `` ...).
    pub uom: String,
    pub warn: Option<Range>,
    pub crit: Option<Range>,
    pub min: Option<f64>,
    pub max: Option<f64>,
}

/// A perfdata item that was skipped, and why.
#[derive(Debug, Clone, PartialEq)]
pub struct PerfError {
    pub item: String,
    pub reason: String,
}

impl fmt::Display for PerfError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "perfdata item {:?}: {}", self.item, self.reason)
    }
}

/// Parses a perfdata string (space-separated items). Bad items are returned as
/// errors and skipped; good ones around them are kept.
pub fn parse_perfdata(text: &str) -> (Vec<PerfDatum>, Vec<PerfError>) {
    let mut data = Vec::new();
    let mut errors = Vec::new();
    let chars: Vec<char> = text.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        if chars[i].is_whitespace() {
            i += 1;
            continue;
        }
        let start = i;
        // Label: quoted ('' is an escaped quote) or up to '='.
        let mut label = String::new();
        let mut ok = true;
        if chars[i] == '\'' {
            i += 1;
            loop {
                match chars.get(i) {
                    None => {
                        ok = false;
                        break;
                    }
                    Some('\'') if chars.get(i + 1) == Some(&'\'') => {
                        label.push('\'');
                        i += 2;
                    }
                    Some('\'') => {
                        i += 1;
                        break;
                    }
                    Some(c) => {
                        label.push(*c);
                        i += 1;
                    }
                }
            }
        } else {
            while i < chars.len() && chars[i] != '=' && !chars[i].is_whitespace() {
                label.push(chars[i]);
                i += 1;
            }
        }
        if !ok {
            errors.push(PerfError {
                item: chars[start..].iter().collect(),
                reason: "unterminated quote in label".into(),
            });
            break;
        }
        if chars.get(i) != Some(&'=') {
            // Skip to the next whitespace: one bad item must not swallow the rest.
            while i < chars.len() && !chars[i].is_whitespace() {
                i += 1;
            }
            errors.push(PerfError { item: chars[start..i].iter().collect(), reason: "expected label=value".into() });
            continue;
        }
        i += 1;
        let value_start = i;
        while i < chars.len() && !chars[i].is_whitespace() {
            i += 1;
        }
        let value_text: String = chars[value_start..i].iter().collect();
        match parse_datum_value(label, &value_text) {
            Ok(d) => data.push(d),
            Err(reason) => errors.push(PerfError { item: chars[start..i].iter().collect(), reason }),
        }
    }
    (data, errors)
}

fn parse_datum_value(label: String, text: &str) -> Result<PerfDatum, String> {
    if label.is_empty() {
        return Err("empty label".into());
    }
    let mut fields = text.split(';');
    let first = fields.next().unwrap_or("");
    let (value, uom) = if first == "U" {
        (None, String::new())
    } else {
        let (num, rest) = split_number(first).ok_or_else(|| format!("value {first:?} is not a number"))?;
        (Some(num), rest.to_string())
    };
    let threshold = |f: Option<&str>| -> Result<Option<Range>, String> {
        match f.map(|s| strip_uom(s.trim(), &uom)) {
            None | Some("") => Ok(None),
            Some(s) => parse_range(s).map(Some),
        }
    };
    let number = |f: Option<&str>, what: &str| -> Result<Option<f64>, String> {
        match f.map(|s| strip_uom(s.trim(), &uom)) {
            None | Some("") => Ok(None),
            Some(s) => match split_number(s) {
                Some((n, "")) => Ok(Some(n)),
                _ => Err(format!("{what} {s:?} is not a number")),
            },
        }
    };
    let warn = threshold(fields.next())?;
    let crit = threshold(fields.next())?;
    let min = number(fields.next(), "min")?;
    let max = number(fields.next(), "max")?;
    Ok(PerfDatum { label, value, uom, warn, crit, min, max })
}

/// Thresholds should carry no unit, but some plugins repeat it: tolerate that.
fn strip_uom<'a>(s: &'a str, uom: &str) -> &'a str {
    if uom.is_empty() { s } else { s.strip_suffix(uom).unwrap_or(s) }
}

/// Splits a leading decimal number (sign, digits, point, exponent) from the rest.
fn split_number(s: &str) -> Option<(f64, &str)> {
    let b = s.as_bytes();
    let mut i = 0;
    if i < b.len() && (b[i] == b'-' || b[i] == b'+') {
        i += 1;
    }
    let digits_start = i;
    while i < b.len() && b[i].is_ascii_digit() {
        i += 1;
    }
    let mut ndigits = i - digits_start;
    if i < b.len() && (b[i] == b'.' || b[i] == b',') {
        // A comma decimal separator comes from plugins run in a non-C locale.
        let frac_start = i + 1;
        let mut j = frac_start;
        while j < b.len() && b[j].is_ascii_digit() {
            j += 1;
        }
        ndigits += j - frac_start;
        i = j;
    }
    if ndigits == 0 {
        return None;
    }
    if i < b.len() && (b[i] == b'e' || b[i] == b'E') {
        let mut j = i + 1;
        if j < b.len() && (b[j] == b'-' || b[j] == b'+') {
            j += 1;
        }
        let exp_digits = j;
        while j < b.len() && b[j].is_ascii_digit() {
            j += 1;
        }
        if j > exp_digits {
            i = j;
        }
    }
    let num: f64 = s[..i].replace(',', ".").parse().ok()?;
    num.is_finite().then_some((num, &s[i..]))
}

/// A Nagios threshold range: alert when the value is outside `start..=end`
/// (or inside it, with `inside`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Range {
    /// `f64::NEG_INFINITY` for `~`.
    pub start: f64,
    /// `f64::INFINITY` when the end is left empty (`10:`).
    pub end: f64,
    /// `@` prefix: alert when inside the range.
    pub inside: bool,
}

impl Range {
    /// Whether `value` raises an alert against this range.
    pub fn alerts(&self, value: f64) -> bool {
        let within = value >= self.start && value <= self.end;
        if self.inside { within } else { !within }
    }

    /// The same range with both ends multiplied by `factor` (> 0), for unit conversion.
    pub fn scaled(&self, factor: f64) -> Range {
        Range { start: self.start * factor, end: self.end * factor, inside: self.inside }
    }
}

/// Renders in the guidelines' syntax; `parse_range` reads it back unchanged.
impl fmt::Display for Range {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.inside {
            f.write_str("@")?;
        }
        if self.start == f64::NEG_INFINITY {
            f.write_str("~:")?;
        } else if self.start != 0.0 || self.inside || self.end == f64::INFINITY {
            write!(f, "{}:", self.start)?;
        }
        if self.end != f64::INFINITY {
            write!(f, "{}", self.end)?;
        }
        Ok(())
    }
}

/// Parses a threshold range: `10` (0..10), `10:` (>= 10), `~:10` (<= 10),
/// `10:20`, `@10:20` (alert inside).
pub fn parse_range(s: &str) -> Result<Range, String> {
    let (inside, body) = match s.strip_prefix('@') {
        Some(rest) => (true, rest),
        None => (false, s),
    };
    let num = |t: &str| -> Result<f64, String> {
        match split_number(t) {
            Some((n, "")) => Ok(n),
            _ => Err(format!("range {s:?}: {t:?} is not a number")),
        }
    };
    let (start, end) = match body.split_once(':') {
        None => (0.0, num(body)?),
        Some((a, b)) => {
            let start = if a == "~" {
                f64::NEG_INFINITY
            } else if a.is_empty() {
                0.0
            } else {
                num(a)?
            };
            let end = if b.is_empty() { f64::INFINITY } else { num(b)? };
            (start, end)
        }
    };
    if start > end {
        return Err(format!("range {s:?}: start is greater than end"));
    }
    Ok(Range { start, end, inside })
}

/// A perfdata unit converted to the UCUM unit pikett reports, with the factor
/// that takes the printed value to it.
///
/// Times go to seconds and byte sizes to bytes (KB/MB/GB/TB as powers of 1024,
/// which is what Nagios plugins mean), so the same quantity has one unit no matter
/// which plugin printed it. Unknown units are kept as printed.
pub fn ucum_unit(uom: &str) -> (String, f64) {
    match uom {
        "" => ("1".into(), 1.0),
        "s" => ("s".into(), 1.0),
        "ms" => ("s".into(), 1e-3),
        "us" => ("s".into(), 1e-6),
        "%" => ("%".into(), 1.0),
        "B" => ("By".into(), 1.0),
        "KB" => ("By".into(), 1024.0),
        "MB" => ("By".into(), 1024.0 * 1024.0),
        "GB" => ("By".into(), 1024.0 * 1024.0 * 1024.0),
        "TB" => ("By".into(), 1024.0 * 1024.0 * 1024.0 * 1024.0),
        "c" => ("{count}".into(), 1.0),
        other => (other.into(), 1.0),
    }
}

/// Converts a value by a unit factor; small factors divide, so `100 ms` is exactly `0.1 s`.
pub fn convert(value: f64, factor: f64) -> f64 {
    if factor < 1.0 { value / (1.0 / factor).round() } else { value * factor }
}

/// How a plugin's process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    Code(i32),
    Signal(i32),
}

/// Maps a plugin's exit to a state, with a note for anything outside 0..=3.
pub fn state_from_exit(exit: Exit) -> (State, Option<String>) {
    match exit {
        Exit::Code(c @ 0..=3) => (State::from_exit_code(c), None),
        Exit::Code(126) => (State::Unknown, Some("plugin is not executable (exit 126)".into())),
        Exit::Code(127) => (State::Unknown, Some("plugin or a program it runs was not found (exit 127)".into())),
        Exit::Code(c) => (State::Unknown, Some(format!("plugin exited with code {c}, not 0-3"))),
        Exit::Signal(s) => (State::Unknown, Some(format!("plugin was killed by signal {s} ({})", signal_name(s)))),
    }
}

fn signal_name(sig: i32) -> &'static str {
    match sig {
        1 => "SIGHUP",
        2 => "SIGINT",
        3 => "SIGQUIT",
        4 => "SIGILL",
        6 => "SIGABRT",
        7 => "SIGBUS",
        8 => "SIGFPE",
        9 => "SIGKILL",
        11 => "SIGSEGV",
        13 => "SIGPIPE",
        14 => "SIGALRM",
        15 => "SIGTERM",
        _ => "signal",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(text: &str) -> PerfDatum {
        let (d, e) = parse_perfdata(text);
        assert!(e.is_empty(), "errors: {e:?}");
        assert_eq!(d.len(), 1, "{d:?}");
        d.into_iter().next().unwrap()
    }

    #[test]
    fn full_item_with_all_fields() {
        let d = one("time=0.012345s;1.000000;2.000000;0.000000;10.000000");
        assert_eq!(d.label, "time");
        assert_eq!(d.value, Some(0.012345));
        assert_eq!(d.uom, "s");
        assert_eq!(d.warn, Some(Range { start: 0.0, end: 1.0, inside: false }));
        assert_eq!(d.crit, Some(Range { start: 0.0, end: 2.0, inside: false }));
        assert_eq!(d.min, Some(0.0));
        assert_eq!(d.max, Some(10.0));
    }

    #[test]
    fn quoted_label_with_spaces_and_escaped_quote() {
        let d = one("'/var log''s'=42%;80;90");
        assert_eq!(d.label, "/var log's");
        assert_eq!(d.value, Some(42.0));
        assert_eq!(d.uom, "%");
        assert_eq!(d.min, None);
    }

    #[test]
    fn empty_fields_and_trailing_spaces() {
        let (d, e) = parse_perfdata(" a=1;;;0; b=2ms;;  \t ");
        assert!(e.is_empty());
        assert_eq!(d.len(), 2);
        assert_eq!(d[0].warn, None);
        assert_eq!(d[0].crit, None);
        assert_eq!(d[0].min, Some(0.0));
        assert_eq!(d[0].max, None);
        assert_eq!(d[1].uom, "ms");
    }

    #[test]
    fn check_disk_style_item() {
        // As printed by monitoring-plugins 2.3 check_disk.
        let d = one("/=1234MB;8000;9000;0;10000");
        assert_eq!(d.label, "/");
        assert_eq!(d.uom, "MB");
        assert_eq!(d.max, Some(10000.0));
    }

    #[test]
    fn undetermined_value_is_none() {
        let d = one("x=U;1;2");
        assert_eq!(d.value, None);
    }

    #[test]
    fn bad_item_is_skipped_and_reported() {
        let (d, e) = parse_perfdata("good=1 bad=abc other=2c junk");
        assert_eq!(d.iter().map(|x| x.label.as_str()).collect::<Vec<_>>(), ["good", "other"]);
        assert_eq!(d[1].uom, "c");
        assert_eq!(e.len(), 2);
        assert!(e[0].reason.contains("not a number"), "{:?}", e[0]);
        assert_eq!(e[1].item, "junk");
    }

    #[test]
    fn unterminated_quote_is_an_error() {
        let (d, e) = parse_perfdata("a=1 'oops=2");
        assert_eq!(d.len(), 1);
        assert_eq!(e.len(), 1);
        assert!(e[0].reason.contains("quote"));
    }

    #[test]
    fn negative_and_exponent_values() {
        assert_eq!(one("t=-3.5").value, Some(-3.5));
        assert_eq!(one("t=1e3B").value, Some(1000.0));
        assert_eq!(one("t=1e3B").uom, "B");
        assert_eq!(one("t=.5").value, Some(0.5));
    }

    #[test]
    fn thresholds_with_repeated_unit_are_tolerated() {
        let d = one("load=5%;80%;90%;0%;100%");
        assert_eq!(d.warn.unwrap().end, 80.0);
        assert_eq!(d.max, Some(100.0));
    }

    #[test]
    fn ranges_per_guidelines() {
        assert_eq!(parse_range("10").unwrap(), Range { start: 0.0, end: 10.0, inside: false });
        assert_eq!(parse_range("10:").unwrap(), Range { start: 10.0, end: f64::INFINITY, inside: false });
        assert_eq!(parse_range("~:10").unwrap(), Range { start: f64::NEG_INFINITY, end: 10.0, inside: false });
        assert_eq!(parse_range("10:20").unwrap(), Range { start: 10.0, end: 20.0, inside: false });
        assert_eq!(parse_range("@10:20").unwrap(), Range { start: 10.0, end: 20.0, inside: true });
        assert!(parse_range("20:10").is_err());
        assert!(parse_range("x").is_err());
        assert!(parse_range("1:y").is_err());
    }

    #[test]
    fn range_alerting_matches_guidelines_table() {
        let r = parse_range("10").unwrap();
        assert!(r.alerts(-1.0) && r.alerts(11.0) && !r.alerts(0.0) && !r.alerts(10.0));
        let r = parse_range("10:").unwrap();
        assert!(r.alerts(9.9) && !r.alerts(1e9));
        let r = parse_range("~:10").unwrap();
        assert!(r.alerts(10.1) && !r.alerts(-1e9));
        let r = parse_range("10:20").unwrap();
        assert!(r.alerts(9.0) && r.alerts(21.0) && !r.alerts(15.0));
        let r = parse_range("@10:20").unwrap();
        assert!(!r.alerts(9.0) && r.alerts(10.0) && r.alerts(20.0) && !r.alerts(21.0));
    }

    #[test]
    fn range_display_round_trips_examples() {
        for s in ["10", "10:", "~:10", "10:20", "@10:20", "@~:5", "@0:5", "-5:-1", "~:"] {
            let r = parse_range(s).unwrap();
            assert_eq!(parse_range(&r.to_string()).unwrap(), r, "{s} -> {r}");
        }
        assert_eq!(parse_range("0:10").unwrap().to_string(), "10");
        assert_eq!(parse_range("@10:20").unwrap().to_string(), "@10:20");
    }

    #[test]
    fn plugin_output_multiline() {
        let out = "DISK OK - free space | /=2643MB;5948;5958;0;5968\n\
                   / 15272 MB (77% inode=-):\n\
                   /boot 68 MB (69% inode=99%): | /boot=68MB;88;93;0;98\n\
                   /home=69357MB;253404;253409;0;253414 \n";
        let p = parse_plugin_output(out);
        assert_eq!(p.summary, "DISK OK - free space");
        assert_eq!(p.long_output, vec!["/ 15272 MB (77% inode=-):", "/boot 68 MB (69% inode=99%):"]);
        let labels: Vec<_> = p.perfdata.iter().map(|d| d.label.as_str()).collect();
        assert_eq!(labels, ["/", "/boot", "/home"]);
        assert!(p.perf_errors.is_empty());
    }

    #[test]
    fn plugin_output_without_perfdata_or_output() {
        let p = parse_plugin_output("connect to address 127.0.0.1 and port 1: Connection refused\n");
        assert_eq!(p.summary, "connect to address 127.0.0.1 and port 1: Connection refused");
        assert!(p.perfdata.is_empty());
        let p = parse_plugin_output("");
        assert_eq!(p.summary, "");
    }

    #[test]
    fn units_go_to_ucum_base_units() {
        assert_eq!(ucum_unit("ms"), ("s".to_string(), 1e-3));
        assert_eq!(ucum_unit("KB").0, "By");
        assert_eq!(ucum_unit("c").0, "{count}");
        assert_eq!(ucum_unit("").0, "1");
        assert_eq!(ucum_unit("Cel").0, "Cel");
        assert_eq!(convert(100.0, 1e-3), 0.1);
        assert_eq!(convert(3.0, 1e-6), 3e-6);
        assert_eq!(convert(2.0, 1024.0 * 1024.0), 2097152.0);
    }

    #[test]
    fn exit_codes_map_to_states() {
        assert_eq!(state_from_exit(Exit::Code(0)), (State::Ok, None));
        assert_eq!(state_from_exit(Exit::Code(1)).0, State::Warning);
        assert_eq!(state_from_exit(Exit::Code(2)).0, State::Critical);
        assert_eq!(state_from_exit(Exit::Code(3)), (State::Unknown, None));
        let (s, note) = state_from_exit(Exit::Code(4));
        assert_eq!(s, State::Unknown);
        assert!(note.unwrap().contains("code 4"));
        assert!(state_from_exit(Exit::Code(127)).1.unwrap().contains("127"));
        let (s, note) = state_from_exit(Exit::Signal(9));
        assert_eq!(s, State::Unknown);
        assert!(note.unwrap().contains("SIGKILL"));
    }

    mod props {
        use super::super::*;
        use proptest::prelude::*;

        fn finite() -> impl Strategy<Value = f64> {
            prop_oneof![(-1e6f64..1e6), (-1000i32..1000).prop_map(f64::from)]
        }

        fn range() -> impl Strategy<Value = Range> {
            (finite(), finite(), any::<bool>(), 0u8..4).prop_map(|(a, b, inside, open)| {
                let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
                let start = if open == 1 { f64::NEG_INFINITY } else { lo };
                let end = if open == 2 { f64::INFINITY } else { hi };
                Range { start, end, inside }
            })
        }

        fn label() -> impl Strategy<Value = String> {
            "[a-zA-Z0-9_/ ':.-]{1,20}"
        }

        fn render_label(l: &str) -> String {
            format!("'{}'", l.replace('\'', "''"))
        }

        fn opt(r: Option<String>) -> String {
            r.unwrap_or_default()
        }

        proptest! {
            #[test]
            fn range_round_trips(r in range()) {
                prop_assert_eq!(parse_range(&r.to_string()).unwrap(), r);
            }

            #[test]
            fn perfdata_round_trips(
                items in proptest::collection::vec(
                    (label(), finite(), prop::sample::select(vec!["", "s", "ms", "%", "B", "KB", "c"]),
                     proptest::option::of(range()), proptest::option::of(range()),
                     proptest::option::of(finite()), proptest::option::of(finite())),
                    0..6),
                sep in "[ ]{1,3}",
            ) {
                let text: Vec<String> = items.iter().map(|(l, v, u, w, c, mn, mx)| {
                    format!("{}={}{};{};{};{};{}", render_label(l), v, u,
                        opt(w.map(|r| r.to_string())), opt(c.map(|r| r.to_string())),
                        opt(mn.map(|n| n.to_string())), opt(mx.map(|n| n.to_string())))
                }).collect();
                let (parsed, errors) = parse_perfdata(&text.join(&sep));
                prop_assert!(errors.is_empty(), "{:?}", errors);
                prop_assert_eq!(parsed.len(), items.len());
                for (p, (l, v, u, w, c, mn, mx)) in parsed.iter().zip(items.iter()) {
                    prop_assert_eq!(&p.label, l);
                    prop_assert_eq!(p.value, Some(*v));
                    prop_assert_eq!(&p.uom, u);
                    prop_assert_eq!(p.warn, *w);
                    prop_assert_eq!(p.crit, *c);
                    prop_assert_eq!(p.min, *mn);
                    prop_assert_eq!(p.max, *mx);
                }
            }

            #[test]
            fn parser_never_panics(s in "\\PC{0,80}") {
                let _ = parse_plugin_output(&s);
            }
        }
    }
}
