//! Turns Redfish sensor payloads (old `Thermal`/`Power`, new `Sensors`/`ThermalSubsystem`/`PowerSubsystem`) into readings with states; pure functions over JSON.

use std::collections::{BTreeMap, HashSet};

use serde_json::Value;

use crate::observation::State;

/// What a reading measures; decides the check prefix, metric name and unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Temperature,
    Fan,
    Voltage,
    Power,
}

impl Kind {
    /// The check-name path segment: `redfish/<segment>/<name>`.
    pub fn check_segment(self) -> &'static str {
        match self {
            Kind::Temperature => "thermal",
            Kind::Fan => "fan",
            Kind::Voltage => "voltage",
            Kind::Power => "power",
        }
    }
}

/// Sensor thresholds; any may be absent (null is normal on real BMCs).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Thresholds {
    pub upper_warn: Option<f64>,
    pub upper_crit: Option<f64>,
    pub upper_fatal: Option<f64>,
    pub lower_warn: Option<f64>,
    pub lower_crit: Option<f64>,
    pub lower_fatal: Option<f64>,
}

impl Thresholds {
    pub fn is_empty(&self) -> bool {
        *self == Thresholds::default()
    }

    /// Old-schema property names (`UpperThresholdNonCritical`, ...).
    pub fn from_classic(v: &Value) -> Thresholds {
        Thresholds {
            upper_warn: num(v.get("UpperThresholdNonCritical")),
            upper_crit: num(v.get("UpperThresholdCritical")),
            upper_fatal: num(v.get("UpperThresholdFatal")),
            lower_warn: num(v.get("LowerThresholdNonCritical")),
            lower_crit: num(v.get("LowerThresholdCritical")),
            lower_fatal: num(v.get("LowerThresholdFatal")),
        }
    }

    /// New-schema `Thresholds` object (`UpperCaution.Reading`, ...).
    pub fn from_sensor(v: &Value) -> Thresholds {
        let t = |k: &str| num(v.get("Thresholds").and_then(|t| t.get(k)).and_then(|t| t.get("Reading")));
        Thresholds {
            upper_warn: t("UpperCaution"),
            upper_crit: t("UpperCritical"),
            upper_fatal: t("UpperFatal"),
            lower_warn: t("LowerCaution"),
            lower_crit: t("LowerCritical"),
            lower_fatal: t("LowerFatal"),
        }
    }

    /// State of `value` against these thresholds (crossing means reaching the limit).
    pub fn state_of(&self, value: f64) -> State {
        let ge = |t: Option<f64>| t.is_some_and(|t| value >= t);
        let le = |t: Option<f64>| t.is_some_and(|t| value <= t);
        if ge(self.upper_crit) || ge(self.upper_fatal) || le(self.lower_crit) || le(self.lower_fatal) {
            State::Critical
        } else if ge(self.upper_warn) || le(self.lower_warn) {
            State::Warning
        } else {
            State::Ok
        }
    }

    /// `warn 85, crit 90, low warn 3, low crit -7`; empty when no threshold is set.
    pub fn describe(&self) -> String {
        let parts: Vec<String> = [
            ("warn", self.upper_warn),
            ("crit", self.upper_crit),
            ("fatal", self.upper_fatal),
            ("low warn", self.lower_warn),
            ("low crit", self.lower_crit),
            ("low fatal", self.lower_fatal),
        ]
        .iter()
        .filter_map(|(label, v)| v.map(|v| format!("{label} {}", fmt_num(v))))
        .collect();
        parts.join(", ")
    }
}

/// One sensor reading, schema-independent.
#[derive(Debug, Clone, PartialEq)]
pub struct Reading {
    pub kind: Kind,
    /// Display name (`CPU1 Temp`); made unique per kind by [`merge`].
    pub name: String,
    /// Resource `Id` or `MemberId`, the fallback name when names collide.
    pub id: String,
    pub odata_id: String,
    pub value: Option<f64>,
    /// UCUM unit: `Cel`, `RPM`, `%`, `V`, `W`.
    pub unit: String,
    /// The JSON property the value comes from, named when it is missing.
    pub field: String,
    pub thresholds: Thresholds,
    pub health: Option<String>,
    pub status_state: Option<String>,
    /// Normalised names under which this sensor may also appear in another schema.
    pub aliases: Vec<String>,
    /// `PhysicalContext` (`CPU`, `PowerSupply`, `SystemBoard`, ...).
    pub context: Option<String>,
}

/// A JSON number as f64; null, strings and absent fields are `None`.
pub fn num(v: Option<&Value>) -> Option<f64> {
    v.and_then(Value::as_f64)
}

/// A JSON string; null and absent are `None`.
pub fn text(v: Option<&Value>) -> Option<String> {
    v.and_then(Value::as_str).map(str::to_string)
}

/// `40`, `1.22`, `-7`: integers without a decimal point.
pub fn fmt_num(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        let s = format!("{v:.3}");
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    }
}

/// Lower-case alphanumerics only, so `PS1 Voltage` and `PS1Voltage` compare equal.
pub fn normalise(s: &str) -> String {
    s.chars().filter(|c| c.is_alphanumeric()).flat_map(char::to_lowercase).collect()
}

fn status(v: &Value) -> (Option<String>, Option<String>) {
    let st = v.get("Status");
    (text(st.and_then(|s| s.get("Health"))), text(st.and_then(|s| s.get("State"))))
}

fn odata_id(v: &Value) -> String {
    text(v.get("@odata.id")).unwrap_or_default()
}

fn base_reading(kind: Kind, v: &Value, unit: &str, field: &str) -> Reading {
    let name = text(v.get("Name")).unwrap_or_default();
    let id = text(v.get("Id")).or_else(|| text(v.get("MemberId"))).unwrap_or_default();
    let (health, status_state) = status(v);
    let mut aliases = vec![normalise(&name)];
    if !id.is_empty() && v.get("Id").is_some() {
        aliases.push(normalise(&id));
    }
    Reading {
        kind,
        name: if name.is_empty() { id.clone() } else { name },
        id,
        odata_id: odata_id(v),
        value: None,
        unit: unit.to_string(),
        field: field.to_string(),
        thresholds: Thresholds::default(),
        health,
        status_state,
        aliases,
        context: text(v.get("PhysicalContext")),
    }
}

/// A new-schema `Sensor` resource; `None` for reading types we do not report (current, frequency, percent usage).
pub fn from_sensor(v: &Value) -> Option<Reading> {
    let (kind, unit) = match v.get("ReadingType").and_then(Value::as_str)? {
        "Temperature" => (Kind::Temperature, "Cel".to_string()),
        "Rotational" => {
            let u = text(v.get("ReadingUnits")).unwrap_or_else(|| "RPM".into());
            (Kind::Fan, if u == "%" || u.eq_ignore_ascii_case("percent") { "%".into() } else { "RPM".into() })
        }
        "Voltage" => (Kind::Voltage, "V".to_string()),
        "Power" => (Kind::Power, "W".to_string()),
        _ => return None,
    };
    let mut r = base_reading(kind, v, &unit, "Reading");
    r.value = num(v.get("Reading"));
    r.thresholds = Thresholds::from_sensor(v);
    Some(r)
}

/// Old `Thermal.Temperatures[]` member.
pub fn from_classic_temperature(v: &Value) -> Reading {
    let mut r = base_reading(Kind::Temperature, v, "Cel", "ReadingCelsius");
    r.value = num(v.get("ReadingCelsius"));
    r.thresholds = Thresholds::from_classic(v);
    r
}

/// Old `Thermal.Fans[]` member (`Reading` + `ReadingUnits`, or the pre-2016 `ReadingRPM`).
pub fn from_classic_fan(v: &Value) -> Reading {
    let percent = v.get("ReadingUnits").and_then(Value::as_str) == Some("Percent");
    let (unit, field) = if percent {
        ("%", "Reading")
    } else if v.get("Reading").is_some() {
        ("RPM", "Reading")
    } else {
        ("RPM", "ReadingRPM")
    };
    let mut r = base_reading(Kind::Fan, v, unit, field);
    if r.name.is_empty() {
        r.name = text(v.get("FanName")).unwrap_or_default();
    }
    r.value = num(v.get(field));
    r.thresholds = Thresholds::from_classic(v);
    r
}

/// New `ThermalSubsystem/Fans/<id>` resource: speed only, no thresholds.
pub fn from_fan_resource(v: &Value) -> Reading {
    let speed = v.get("SpeedPercent");
    let rpm = num(speed.and_then(|s| s.get("SpeedRPM")));
    let pct = num(speed.and_then(|s| s.get("Reading")));
    let mut r = match (rpm, pct) {
        (None, Some(p)) => {
            let mut r = base_reading(Kind::Fan, v, "%", "SpeedPercent.Reading");
            r.value = Some(p);
            r
        }
        (rpm, _) => {
            let mut r = base_reading(Kind::Fan, v, "RPM", "SpeedPercent.SpeedRPM");
            r.value = rpm;
            r
        }
    };
    // The service label is the name the other schemas use ("System Board Fan1A").
    if let Some(label) = text(v.pointer("/Location/PartLocation/ServiceLabel")).filter(|l| !l.is_empty()) {
        r.aliases.push(normalise(&label));
        r.name = label;
    }
    r
}

/// Old `Power.Voltages[]` member.
pub fn from_classic_voltage(v: &Value) -> Reading {
    let mut r = base_reading(Kind::Voltage, v, "V", "ReadingVolts");
    r.value = num(v.get("ReadingVolts"));
    r.thresholds = Thresholds::from_classic(v);
    r
}

/// Old `Power.PowerControl[]` member: consumed watts.
pub fn from_power_control(v: &Value) -> Reading {
    let mut r = base_reading(Kind::Power, v, "W", "PowerConsumedWatts");
    r.value = num(v.get("PowerConsumedWatts"));
    r
}

/// Every reading of an old `Thermal` resource.
pub fn classic_thermal(v: &Value) -> Vec<Reading> {
    let mut out: Vec<Reading> = array(v, "Temperatures").map(from_classic_temperature).collect();
    out.extend(array(v, "Fans").map(from_classic_fan));
    out
}

/// Every reading of an old `Power` resource (PSUs are handled as components, not readings).
pub fn classic_power(v: &Value) -> Vec<Reading> {
    let mut out: Vec<Reading> = array(v, "Voltages").map(from_classic_voltage).collect();
    out.extend(array(v, "PowerControl").map(from_power_control));
    out
}

/// Members of a JSON array property (empty when absent or not an array).
pub fn array<'a>(v: &'a Value, key: &str) -> impl Iterator<Item = &'a Value> {
    v.get(key).and_then(Value::as_array).map(|a| a.as_slice()).unwrap_or(&[]).iter()
}

/// Merges readings from several schemas, preferred source first: a reading whose
/// name or id was already seen (for its kind) is dropped, so no sensor is reported
/// twice. Then names that still collide within a kind fall back to the id.
pub fn merge(sources: Vec<Vec<Reading>>) -> Vec<Reading> {
    let mut seen: HashSet<(Kind, String)> = HashSet::new();
    let mut out: Vec<Reading> = Vec::new();
    for source in sources {
        let mut added: Vec<Reading> = Vec::new();
        for r in source {
            if r.aliases.iter().any(|a| !a.is_empty() && seen.contains(&(r.kind, a.clone()))) {
                continue;
            }
            added.push(r);
        }
        // Mark after the whole source so duplicates inside one source are kept and renamed below.
        for r in &added {
            for a in &r.aliases {
                seen.insert((r.kind, a.clone()));
            }
        }
        out.extend(added);
    }
    let mut counts: BTreeMap<(Kind, String), usize> = BTreeMap::new();
    for r in &out {
        *counts.entry((r.kind, r.name.clone())).or_default() += 1;
    }
    for r in &mut out {
        if counts[&(r.kind, r.name.clone())] > 1 && !r.id.is_empty() {
            r.name = r.id.clone();
        }
    }
    out
}

/// `Status.Health` as a state: null contributes nothing (OK); unknown words are UNKNOWN.
pub fn health_state(health: Option<&str>) -> State {
    match health {
        None | Some("OK") => State::Ok,
        Some("Warning") => State::Warning,
        Some("Critical") => State::Critical,
        Some(_) => State::Unknown,
    }
}

/// Context shared by every check of one poll.
#[derive(Debug, Clone, Default)]
pub struct Context {
    pub service_tag: Option<String>,
    /// `PowerState` of the system when it is not `On` (readings are expected to be missing).
    pub power_off: Option<String>,
}

impl Context {
    /// ` — service tag F54P1G3` or nothing.
    pub fn tag_suffix(&self) -> String {
        match &self.service_tag {
            Some(t) => format!(", service tag {t}"),
            None => String::new(),
        }
    }
}

/// The state and summary of a reading, or `None` for an empty slot (`State = Absent`).
pub fn evaluate(r: &Reading, ctx: &Context) -> Option<(State, String)> {
    if r.status_state.as_deref() == Some("Absent") {
        return None;
    }
    let health = health_state(r.health.as_deref());
    let health_note = match r.health.as_deref() {
        Some("OK") | None => String::new(),
        Some(h) => format!("; health {h}"),
    };
    let (state, mut summary) = match r.value {
        Some(v) => {
            let t = r.thresholds.describe();
            let s = if t.is_empty() {
                format!("{} {}", fmt_num(v), r.unit)
            } else {
                format!("{} {} ({t})", fmt_num(v), r.unit)
            };
            (r.thresholds.state_of(v).worst(health), format!("{s}{health_note}"))
        }
        // A voltage "reading" without value or thresholds is a discrete power-good
        // signal on iDRACs: only its health means anything.
        None if r.kind == Kind::Voltage && r.thresholds.is_empty() && r.health.is_some() => {
            (health, format!("discrete sensor (no reading), health {}", r.health.as_deref().unwrap_or("")))
        }
        None => {
            let why = match &ctx.power_off {
                Some(p) => format!("no reading: {} is null (server power state {p}, readings unavailable)", r.field),
                None => format!("no reading: {} is null or missing", r.field),
            };
            let state = if health.severity_rank() > State::Unknown.severity_rank() { health } else { State::Unknown };
            (state, format!("{why}{health_note}"))
        }
    };
    if matches!(state, State::Warning | State::Critical) {
        summary.push_str(&format!(" — {} ({}){}", r.name, r.odata_id, ctx.tag_suffix()));
    }
    Some((state, summary))
}

/// Names a hardware component for a fault summary: name, `@odata.id`, serial and part number.
pub fn describe_component(v: &Value) -> String {
    let name = text(v.get("Name")).or_else(|| text(v.get("Id"))).unwrap_or_else(|| "component".into());
    let mut parts = vec![odata_id(v)];
    if let Some(m) = text(v.get("Model")).filter(|s| !s.trim().is_empty()) {
        parts.push(m.trim().to_string());
    }
    if let Some(s) = text(v.get("SerialNumber")).filter(|s| !s.trim().is_empty()) {
        parts.push(format!("SN {}", s.trim()));
    }
    if let Some(p) = text(v.get("PartNumber")).filter(|s| !s.trim().is_empty()) {
        parts.push(format!("PN {}", p.trim()));
    }
    parts.retain(|p| !p.is_empty());
    format!("{name} ({})", parts.join(", "))
}

/// State of a component (PSU, drive, controller, DIMM) from `Status`; `None` when absent.
/// A null health on an enabled component is "not reported", not a fault.
pub fn component_state(v: &Value) -> Option<(State, String)> {
    let (health, st) = status(v);
    let rollup = text(v.pointer("/Status/HealthRollup"));
    if st.as_deref() == Some("Absent") {
        return None;
    }
    let state = health_state(health.as_deref()).worst(health_state(rollup.as_deref()));
    let mut words = match &health {
        Some(h) => format!("health {h}"),
        None => "health not reported".to_string(),
    };
    if let Some(r) = rollup.filter(|r| Some(r) != health.as_ref()) {
        words.push_str(&format!(", rollup {r}"));
    }
    if let Some(s) = st.filter(|s| s != "Enabled") {
        words.push_str(&format!(", state {s}"));
    }
    Some((state, words))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn classic_temperature_maps_thresholds_and_formats_summary() {
        let v = json!({"Name":"CPU1 Temp","MemberId":"0","ReadingCelsius":40,
            "UpperThresholdNonCritical":85,"UpperThresholdCritical":90,"Status":{"Health":"OK","State":"Enabled"}});
        let r = from_classic_temperature(&v);
        let (s, sum) = evaluate(&r, &Context::default()).unwrap();
        assert_eq!(s, State::Ok);
        assert_eq!(sum, "40 Cel (warn 85, crit 90)");
    }

    #[test]
    fn thresholds_upper_and_lower_map_to_states() {
        let t = Thresholds {
            upper_warn: Some(38.0),
            upper_crit: Some(42.0),
            upper_fatal: None,
            lower_warn: Some(3.0),
            lower_crit: Some(-7.0),
            lower_fatal: None,
        };
        assert_eq!(t.state_of(25.0), State::Ok);
        assert_eq!(t.state_of(38.0), State::Warning);
        assert_eq!(t.state_of(45.0), State::Critical);
        assert_eq!(t.state_of(2.5), State::Warning);
        assert_eq!(t.state_of(-8.0), State::Critical);
        let fatal = Thresholds { upper_fatal: Some(100.0), lower_fatal: Some(1.0), ..Default::default() };
        assert_eq!(fatal.state_of(100.0), State::Critical);
        assert_eq!(fatal.state_of(0.0), State::Critical);
    }

    #[test]
    fn health_overrides_ok_reading_and_names_component() {
        let v = json!({"@odata.id":"/x/Sensors/T","Id":"T","Name":"Inlet","ReadingType":"Temperature",
            "Reading":20.5,"Status":{"Health":"Critical","State":"Enabled"}});
        let r = from_sensor(&v).unwrap();
        let ctx = Context { service_tag: Some("ABC1234".into()), power_off: None };
        let (s, sum) = evaluate(&r, &ctx).unwrap();
        assert_eq!(s, State::Critical);
        assert!(sum.starts_with("20.5 Cel; health Critical"), "{sum}");
        assert!(sum.contains("/x/Sensors/T") && sum.contains("service tag ABC1234"), "{sum}");
    }

    #[test]
    fn null_reading_is_unknown_and_absent_is_skipped() {
        let v = json!({"Name":"Fan1","Reading":null,"ReadingUnits":"RPM","Status":{"Health":null,"State":"Enabled"}});
        let r = from_classic_fan(&v);
        let (s, sum) = evaluate(&r, &Context::default()).unwrap();
        assert_eq!(s, State::Unknown);
        assert!(sum.contains("Reading is null"), "{sum}");
        let off = Context { service_tag: None, power_off: Some("Off".into()) };
        assert!(evaluate(&r, &off).unwrap().1.contains("power state Off"));
        let absent = json!({"Name":"Fan2","Reading":null,"Status":{"State":"Absent"}});
        assert!(evaluate(&from_classic_fan(&absent), &Context::default()).is_none());
    }

    #[test]
    fn discrete_voltage_without_reading_uses_health() {
        let v = json!({"Name":"PS1 PG FAIL","ReadingVolts":null,"Status":{"Health":"OK","State":"Enabled"}});
        let (s, sum) = evaluate(&from_classic_voltage(&v), &Context::default()).unwrap();
        assert_eq!(s, State::Ok);
        assert!(sum.contains("discrete"), "{sum}");
    }

    #[test]
    fn merge_prefers_first_source_and_renames_collisions() {
        let new = vec![
            from_sensor(&json!({"Id":"CPU1Temp","Name":"CPU1 Temp","ReadingType":"Temperature","Reading":37.0}))
                .unwrap(),
            from_sensor(
                &json!({"Id":"PSU.Slot.1_InputPower","Name":"InputPowerSensor","ReadingType":"Power","Reading":3.0}),
            )
            .unwrap(),
            from_sensor(
                &json!({"Id":"PSU.Slot.2_InputPower","Name":"InputPowerSensor","ReadingType":"Power","Reading":4.0}),
            )
            .unwrap(),
        ];
        let old = vec![
            from_classic_temperature(&json!({"MemberId":"0","Name":"CPU1 Temp","ReadingCelsius":37})),
            from_classic_temperature(&json!({"MemberId":"1","Name":"CPU2 Temp","ReadingCelsius":39})),
        ];
        let merged = merge(vec![new, old]);
        let names: Vec<&str> = merged.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["CPU1 Temp", "PSU.Slot.1_InputPower", "PSU.Slot.2_InputPower", "CPU2 Temp"]);
    }

    #[test]
    fn fan_resource_uses_service_label_and_rpm() {
        let v = json!({"Id":"Fan.Embedded.1A","Name":"Fan 1A","SpeedPercent":{"SpeedRPM":18600},
            "Location":{"PartLocation":{"ServiceLabel":"System Board Fan1A"}},"Status":{"Health":"OK","State":"Enabled"}});
        let r = from_fan_resource(&v);
        assert_eq!((r.name.as_str(), r.value, r.unit.as_str()), ("System Board Fan1A", Some(18600.0), "RPM"));
    }

    #[test]
    fn numbers_format_without_spurious_decimals() {
        assert_eq!(fmt_num(40.0), "40");
        assert_eq!(fmt_num(1.22), "1.22");
        assert_eq!(fmt_num(-7.0), "-7");
        assert_eq!(fmt_num(91.0000026226044), "91");
    }

    #[test]
    fn component_with_null_health_is_not_a_fault() {
        let v = json!({"Status":{"Health":null,"HealthRollup":null,"State":"Enabled"}});
        assert_eq!(component_state(&v).unwrap().0, State::Ok);
        let bad = json!({"Status":{"Health":"Critical","State":"Enabled"}});
        assert_eq!(component_state(&bad).unwrap().0, State::Critical);
        assert!(component_state(&json!({"Status":{"State":"Absent"}})).is_none());
    }
}
