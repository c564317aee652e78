//! Turns Redfish sensor payloads (old `Thermal`/`Power`, new `Sensors`/`ThermalSubsystem`/`PowerSubsystem`) into readings with states; pure functions over JSON.

use std::collections::{BTreeMap, HashMap, HashSet};

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
    /// `Id` of the chassis the sensor belongs to: sensors of different chassis are
    /// different sensors even when their names match.
    pub chassis: String,
    /// A discrete (state) sensor: its `Reading` is a state code, not a quantity
    /// (`ReadingUnits` present but empty, e.g. Lenovo's "PSU1 Failure" or "PCIe 5 OverTemp").
    /// Only its health means anything; no sample is exported.
    pub discrete: bool,
}

/// `Status.State` values of a sensor that is not in service (empty slot, disabled
/// channel, powered-down part): with no reading it is skipped, never an UNKNOWN.
pub const NOT_IN_SERVICE: [&str; 5] = ["Absent", "Disabled", "UnavailableOffline", "StandbyOffline", "StandbySpare"];

/// A JSON number as f64; null, strings and absent fields are `None`.
pub fn num(v: Option<&Value>) -> Option<f64> {
    v.and_then(Value::as_f64)
}

/// A JSON string; null and absent are `None`.
pub fn text(v: Option<&Value>) -> Option<String> {
    v.and_then(Value::as_str).map(str::to_string)
}

/// `40`, `1.22`, `3.6348`, `-7`: integers without a decimal point, at most four decimals
/// (BMCs report up to four; float noise such as `91.0000026226044` goes).
pub fn fmt_num(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        let s = format!("{v:.4}");
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
    // The resource itself, and the sensor an old-schema entry says it comes from.
    for uri in [odata_id(v), text(v.get("DataSourceUri")).unwrap_or_default()] {
        if !uri.is_empty() {
            aliases.push(format!("uri:{uri}"));
        }
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
        chassis: String::new(),
        discrete: false,
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
    // Units present but empty, and no numeric threshold: a state code, not a quantity.
    r.discrete =
        r.thresholds.is_empty() && v.get("ReadingUnits").and_then(Value::as_str).is_some_and(|u| u.trim().is_empty());
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
/// name, id or resource was already seen (for its chassis and kind) is dropped, so no
/// sensor is reported twice, whatever precision each schema gives it. Then names are
/// made unique per kind with [`unique_names`].
pub fn merge(sources: Vec<Vec<Reading>>) -> Vec<Reading> {
    // Alias → index in `out` of the reading that stands for it.
    let mut seen: HashMap<(String, Kind, String), usize> = HashMap::new();
    let mut out: Vec<Reading> = Vec::new();
    for source in sources {
        let first_of_source = out.len();
        for r in source {
            let kept = r.aliases.iter().find_map(|a| seen.get(&(r.chassis.clone(), r.kind, a.clone())).copied());
            match kept {
                // The same sensor in a less preferred schema: it may still know the
                // thresholds the preferred one lacks (new-schema fans have none).
                Some(i) => {
                    // Only in the same unit: RPM limits say nothing about a fan in %.
                    if out[i].thresholds.is_empty() && out[i].unit == r.unit {
                        out[i].thresholds = r.thresholds;
                    }
                }
                None => out.push(r),
            }
        }
        // Mark after the whole source: several sensors of one source may share a name
        // (one per PCIe card); they are distinct resources, kept and named apart below.
        for (i, r) in out.iter().enumerate().skip(first_of_source) {
            for a in r.aliases.iter().filter(|a| !a.is_empty()) {
                seen.entry((r.chassis.clone(), r.kind, a.clone())).or_insert(i);
            }
        }
    }
    unique_names(&mut out);
    out
}

/// Check names must be unique per kind. A name shared by sensors of different chassis
/// becomes `name [chassis]` (`GPU Temp [UBB_1]`); shared within one chassis, the resource
/// `Id` (`PSU.Slot.1_InputPower`), or `name id` for the bare numbers of old-schema
/// `MemberId`s; as a last resort the `@odata.id`.
pub fn unique_names(readings: &mut [Reading]) {
    type Namer = fn(&Reading) -> String;
    let namers: [Namer; 3] = [
        |r| if r.chassis.is_empty() { r.name.clone() } else { format!("{} [{}]", r.name, r.chassis) },
        |r| match r.id.as_str() {
            "" => r.name.clone(),
            id if id.chars().all(|c| c.is_ascii_digit()) => format!("{} {id}", r.name),
            id => id.to_string(),
        },
        |r| if r.odata_id.is_empty() { r.name.clone() } else { r.odata_id.clone() },
    ];
    for namer in namers {
        let mut counts: BTreeMap<(Kind, String), usize> = BTreeMap::new();
        for r in readings.iter() {
            *counts.entry((r.kind, r.name.clone())).or_default() += 1;
        }
        let colliding: Vec<usize> =
            (0..readings.len()).filter(|&i| counts[&(readings[i].kind, readings[i].name.clone())] > 1).collect();
        if colliding.is_empty() {
            return;
        }
        // Rename a colliding group only when the new names are unique among all names.
        let proposed: Vec<(usize, String)> = colliding.iter().map(|&i| (i, namer(&readings[i]))).collect();
        let taken: HashSet<(Kind, String)> = (0..readings.len())
            .filter(|i| !colliding.contains(i))
            .map(|i| (readings[i].kind, readings[i].name.clone()))
            .collect();
        let mut new_counts: BTreeMap<(Kind, String), usize> = BTreeMap::new();
        for (i, n) in &proposed {
            *new_counts.entry((readings[*i].kind, n.clone())).or_default() += 1;
        }
        for (i, n) in proposed {
            let key = (readings[i].kind, n.clone());
            if new_counts[&key] == 1 && !taken.contains(&key) {
                readings[i].name = n;
            }
        }
    }
    // Nothing told them apart (no chassis, id or URL): number the later ones.
    let mut seen: HashMap<(Kind, String), usize> = HashMap::new();
    for r in readings.iter_mut() {
        let n = seen.entry((r.kind, r.name.clone())).or_default();
        *n += 1;
        if *n > 1 {
            r.name = format!("{} #{n}", r.name);
        }
    }
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
    /// What the staff on site quote to the vendor: Dell's service tag, else the serial number.
    pub service_tag: Option<String>,
    /// True when `service_tag` is a serial number rather than a Dell service tag.
    pub is_serial: bool,
    /// `PowerState` of the system when it is not `On` (readings are expected to be missing).
    pub power_off: Option<String>,
}

impl Context {
    /// `, service tag F54P1G3`, `, serial J105958B` or nothing.
    pub fn tag_suffix(&self) -> String {
        match &self.service_tag {
            Some(t) if self.is_serial => format!(", serial {t}"),
            Some(t) => format!(", service tag {t}"),
            None => String::new(),
        }
    }
}

/// The state and summary of a reading, or `None` for a sensor not in service
/// ([`NOT_IN_SERVICE`], e.g. the temperature of an empty PCIe slot) without a reading.
pub fn evaluate(r: &Reading, ctx: &Context) -> Option<(State, String)> {
    // A failed part may be "UnavailableOffline" with a Critical health: that is reported.
    let healthy = matches!(r.health.as_deref(), None | Some("OK"));
    let not_in_service = r.status_state.as_deref().is_some_and(|s| NOT_IN_SERVICE.contains(&s));
    if not_in_service && healthy && (r.value.is_none() || r.status_state.as_deref() == Some("Absent")) {
        return None;
    }
    let health = health_state(r.health.as_deref());
    let health_note = match r.health.as_deref() {
        Some("OK") | None => String::new(),
        Some(h) => format!("; health {h}"),
    };
    let (state, mut summary) = match r.value {
        _ if r.discrete => {
            (health, format!("discrete sensor, health {}", r.health.as_deref().unwrap_or("not reported")))
        }
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
        let ctx = Context { service_tag: Some("ABC1234".into()), is_serial: false, power_off: None };
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
        let off = Context { service_tag: None, is_serial: false, power_off: Some("Off".into()) };
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
    fn sensors_sharing_a_name_stay_apart_by_resource_and_chassis() {
        let in_chassis = |chassis: &str, mut r: Reading| {
            r.chassis = chassis.into();
            r
        };
        // One "GPU Temp" per GPU board: old-schema MemberIds repeat across chassis.
        let a = in_chassis(
            "1",
            from_classic_temperature(
                &json!({"@odata.id":"/c/1/Thermal#/Temperatures/0","MemberId":"0","Name":"GPU Temp","ReadingCelsius":40}),
            ),
        );
        let b = in_chassis(
            "UBB_1",
            from_classic_temperature(
                &json!({"@odata.id":"/c/2/Thermal#/Temperatures/0","MemberId":"0","Name":"GPU Temp","ReadingCelsius":41}),
            ),
        );
        // The new schema of chassis 1 has the same sensor, at another precision.
        let new = in_chassis(
            "1",
            from_sensor(&json!({"@odata.id":"/c/1/Sensors/G","Id":"G","Name":"GPU Temp","ReadingType":"Temperature","Reading":40.25})).unwrap(),
        );
        let merged = merge(vec![vec![new], vec![a, b]]);
        let names: Vec<(&str, Option<f64>)> = merged.iter().map(|r| (r.name.as_str(), r.value)).collect();
        assert_eq!(names, [("GPU Temp [1]", Some(40.25)), ("GPU Temp [UBB_1]", Some(41.0))]);
    }

    #[test]
    fn sensors_not_in_service_are_skipped_and_discrete_ones_judged_by_health() {
        for state in NOT_IN_SERVICE {
            let v = json!({"Name":"PCIe 15 Temp","ReadingType":"Temperature","Reading":null,"ReadingUnits":"C",
                "Status":{"Health":null,"State":state}});
            assert!(evaluate(&from_sensor(&v).unwrap(), &Context::default()).is_none(), "{state}");
        }
        // Enabled without a reading is still UNKNOWN: the sensor should be reading.
        let enabled = json!({"Name":"T","ReadingType":"Temperature","Reading":null,"Status":{"State":"Enabled"}});
        assert_eq!(evaluate(&from_sensor(&enabled).unwrap(), &Context::default()).unwrap().0, State::Unknown);
        let failure = json!({"Name":"PSU1 Failure","ReadingType":"Power","Reading":0,"ReadingUnits":"",
            "Status":{"Health":"Critical","State":"Enabled"}});
        let r = from_sensor(&failure).unwrap();
        assert!(r.discrete);
        let (s, sum) = evaluate(&r, &Context::default()).unwrap();
        assert_eq!(s, State::Critical);
        assert!(sum.starts_with("discrete sensor, health Critical"), "{sum}");
    }

    #[test]
    fn thresholds_are_lent_only_in_the_same_unit() {
        let percent = from_fan_resource(&json!({"Id":"Fan1","Name":"Fan1","SpeedPercent":{"Reading":45}}));
        let rpm = from_classic_fan(&json!({"MemberId":"0","Name":"Fan1","Reading":6431,"ReadingUnits":"RPM",
            "LowerThresholdCritical":1000}));
        let merged = merge(vec![vec![percent], vec![rpm]]);
        assert_eq!(merged.len(), 1);
        assert!(merged[0].thresholds.is_empty(), "RPM limits lent to a fan in %");
        assert_eq!(evaluate(&merged[0], &Context::default()).unwrap().0, State::Ok);
    }

    #[test]
    fn a_failed_sensor_out_of_service_is_still_reported() {
        let v = json!({"Name":"Fan 3","ReadingType":"Rotational","Reading":null,
            "Status":{"Health":"Critical","State":"UnavailableOffline"}});
        let (s, _) = evaluate(&from_sensor(&v).unwrap(), &Context::default()).expect("a dead fan hidden");
        assert_eq!(s, State::Critical);
    }

    #[test]
    fn a_temperature_with_thresholds_is_a_reading_even_without_units() {
        let dts = json!({"Name":"CPU 1 DTS","ReadingType":"Temperature","Reading":-51,"ReadingUnits":"",
            "Thresholds":{"UpperCritical":{"Reading":0}}});
        let r = from_sensor(&dts).unwrap();
        assert!(!r.discrete);
        assert_eq!(evaluate(&r, &Context::default()).unwrap().1, "-51 Cel (crit 0)");
    }

    #[test]
    fn names_nothing_else_tells_apart_are_numbered() {
        let t = |v: f64| from_classic_temperature(&json!({"Name":"Temp","ReadingCelsius":v}));
        let merged = merge(vec![vec![t(1.0), t(2.0), t(3.0)]]);
        let names: Vec<&str> = merged.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["Temp", "Temp #2", "Temp #3"]);
    }

    #[test]
    fn a_less_preferred_schema_lends_its_thresholds() {
        let fan = from_fan_resource(&json!({"Id":"Fan1A","Name":"Fan 1A Tach","SpeedPercent":{"SpeedRPM":6608}}));
        let old = from_classic_fan(&json!({"MemberId":"0","Name":"Fan 1A Tach","Reading":6431,"ReadingUnits":"RPM",
            "LowerThresholdCritical":472}));
        let merged = merge(vec![vec![fan], vec![old]]);
        assert_eq!(merged.len(), 1);
        assert_eq!((merged[0].value, merged[0].thresholds.lower_crit), (Some(6608.0), Some(472.0)));
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
        assert_eq!(fmt_num(3.6348), "3.6348");
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
