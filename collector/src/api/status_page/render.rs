//! A [`StatusPageView`] as one HTML document: server-rendered, no scripts, no external
//! assets (the styles are inline), reloading itself every minute. Every text from the
//! collector's state goes through [`escape`]: host names, check names, status updates and
//! maintenance reasons are user data.

use std::fmt::Write as _;

use jiff::Timestamp;
use jiff::tz::TimeZone;

use super::view::{Availability, Health, StatusPageView};

/// How often the page reloads itself, in seconds.
pub const REFRESH_SECONDS: u32 = 60;

/// Escapes text for HTML element content and quoted attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn time(t: Timestamp, tz: &TimeZone) -> String {
    escape(&t.to_zoned(tz.clone()).strftime("%Y-%m-%d %H:%M %Z").to_string())
}

fn percent(fraction: f64) -> String {
    format!("{:.3}&nbsp;%", fraction * 100.0)
}

fn badge(health: Health) -> String {
    let label = match health {
        Health::Up => "Up",
        Health::Degraded => "Degraded",
        Health::Down => "Down",
    };
    format!("<span class=\"badge {}\">{label}</span>", health.as_str())
}

const STYLE: &str = "body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;margin:0 auto;max-width:60rem;\
padding:1rem 1.5rem;color:#1d1d1f;background:#fafafa}h1{font-size:1.6rem;margin-bottom:.2rem}\
h2{font-size:1.2rem;margin-top:2rem;border-bottom:1px solid #ddd;padding-bottom:.3rem}\
table{border-collapse:collapse;width:100%}th,td{text-align:left;padding:.35rem .6rem;border-bottom:1px solid #eee;\
vertical-align:top}.muted{color:#666;font-size:.9rem}.badge{display:inline-block;padding:.1rem .5rem;\
border-radius:.7rem;font-size:.85rem;font-weight:600}.up{background:#d7f5dd;color:#135c24}\
.degraded{background:#fff1c2;color:#6b4e00}.down{background:#fbd5d5;color:#8a1111}\
.overall{padding:.8rem 1rem;border-radius:.5rem;font-weight:600;margin:1rem 0}\
.incident{background:#fff;border:1px solid #e5e5e5;border-radius:.5rem;padding:.6rem 1rem;margin:.8rem 0}\
.eta{font-weight:600}ul{padding-left:1.2rem}li{margin:.3rem 0}";

/// The whole page.
pub fn render(view: &StatusPageView) -> String {
    let tz = &view.tz;
    let mut out = String::with_capacity(8 * 1024);
    let customer = escape(&view.customer);
    // `write!` to a String cannot fail.
    let _ = write!(
        out,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta http-equiv=\"refresh\" content=\"{REFRESH_SECONDS}\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <meta name=\"robots\" content=\"noindex, nofollow\">\n\
         <title>{customer} — service status</title>\n<style>{STYLE}</style>\n</head>\n<body>\n\
         <h1>{customer} — service status</h1>\n\
         <p class=\"muted\">As of {}. This page reloads every minute.</p>\n",
        time(view.generated_at, tz)
    );
    let overall = view.overall();
    let summary = match overall {
        Health::Up => "All systems operational",
        Health::Degraded => "Some services are degraded",
        Health::Down => "Some services are down",
    };
    let _ = writeln!(out, "<div class=\"overall {}\" id=\"overall\">{summary}</div>", overall.as_str());

    out.push_str("<h2>Hosts</h2>\n");
    if view.hosts.is_empty() {
        out.push_str("<p>No hosts are monitored.</p>\n");
    } else {
        out.push_str("<table id=\"hosts\">\n<tr><th>Host</th><th>Status</th><th>Checks</th></tr>\n");
        for h in &view.hosts {
            let checks: Vec<String> =
                h.checks.iter().map(|c| format!("{} {}", escape(&c.name), badge(c.health))).collect();
            let _ = writeln!(
                out,
                "<tr><td>{}</td><td>{}</td><td>{}</td></tr>",
                escape(&h.name),
                badge(h.health),
                checks.join("<br>")
            );
        }
        out.push_str("</table>\n");
    }

    out.push_str("<h2>Open incidents</h2>\n");
    if view.incidents.is_empty() {
        out.push_str("<p>No open incidents.</p>\n");
    }
    for inc in &view.incidents {
        let _ = write!(
            out,
            "<div class=\"incident\" id=\"incident-{}\">\n<p><strong>Incident {}</strong> ({}) — {}<br>\
             <span class=\"muted\">Since {}</span></p>\n",
            inc.number,
            inc.number,
            escape(&inc.state),
            escape(&inc.hosts.join(", ")),
            time(inc.opened_at, tz)
        );
        match inc.eta {
            Some(eta) if inc.eta_passed => {
                let _ = writeln!(
                    out,
                    "<p class=\"eta\">Expected resolution (ETA): {} — passed; a new estimate will follow.</p>",
                    time(eta, tz)
                );
            }
            Some(eta) => {
                let _ = writeln!(out, "<p class=\"eta\">Expected resolution (ETA): {}</p>", time(eta, tz));
            }
            None => out.push_str("<p>No estimate of the resolution time yet.</p>\n"),
        }
        if inc.updates.is_empty() {
            out.push_str("<p>We are working on it; updates will follow here.</p>\n");
        } else {
            out.push_str("<ul>\n");
            for u in &inc.updates {
                let eta = u.eta.map(|e| format!(" <span class=\"muted\">(ETA {})</span>", time(e, tz)));
                let _ = writeln!(
                    out,
                    "<li><span class=\"muted\">{}</span> {}{}</li>",
                    time(u.at, tz),
                    escape(&u.text),
                    eta.unwrap_or_default()
                );
            }
            out.push_str("</ul>\n");
        }
        out.push_str("</div>\n");
    }

    out.push_str("<h2>Availability this month</h2>\n");
    match &view.availability {
        Availability::NoContract => out.push_str("<p>No availability target is agreed for this account.</p>\n"),
        Availability::Unavailable => out.push_str("<p>The availability figures are unavailable right now.</p>\n"),
        Availability::Month { month, rows } => {
            let _ = writeln!(
                out,
                "<p class=\"muted\">{} so far, by service window: the share of the service time from the start \
                 of the month up to now.</p>",
                escape(month)
            );
            out.push_str(
                "<table id=\"availability\">\n<tr><th>Host</th><th>Window</th><th>Availability</th>\
                 <th>Target</th><th></th></tr>\n",
            );
            for r in rows {
                let verdict = if r.met {
                    badge(Health::Up).replace(">Up<", ">Met<")
                } else {
                    badge(Health::Down).replace(">Down<", ">Missed<")
                };
                let _ = writeln!(
                    out,
                    "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{verdict}</td></tr>",
                    escape(&r.host),
                    escape(&r.window),
                    percent(r.availability),
                    percent(r.target)
                );
            }
            out.push_str("</table>\n");
        }
    }

    out.push_str("<h2>Planned maintenance</h2>\n");
    if view.maintenance.is_empty() {
        out.push_str("<p>No maintenance planned.</p>\n");
    } else {
        out.push_str("<table id=\"maintenance\">\n<tr><th>Host</th><th>From</th><th>Until</th><th>Reason</th></tr>\n");
        for m in &view.maintenance {
            let now = if m.in_progress { " <span class=\"badge degraded\">In progress</span>" } else { "" };
            let _ = writeln!(
                out,
                "<tr><td>{}</td><td>{}{now}</td><td>{}</td><td>{}</td></tr>",
                escape(&m.host),
                time(m.start, tz),
                time(m.end, tz),
                escape(&m.reason)
            );
        }
        out.push_str("</table>\n");
    }
    out.push_str("</body>\n</html>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::status_page::view::{
        AvailabilityRow, CheckView, HostView, IncidentView, MaintenanceView, UpdateView,
    };

    fn t(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn view() -> StatusPageView {
        StatusPageView {
            customer: "acme <GmbH> & Co".into(),
            generated_at: t("2026-03-10T12:00:00Z"),
            tz: TimeZone::get("Europe/Berlin").unwrap(),
            hosts: vec![
                HostView { name: "web-1".into(), health: Health::Up, checks: vec![] },
                HostView {
                    name: "<script>alert(1)</script>".into(),
                    health: Health::Degraded,
                    checks: vec![CheckView { name: "http/\"shop\"".into(), health: Health::Degraded }],
                },
                HostView { name: "db-1".into(), health: Health::Down, checks: vec![] },
            ],
            incidents: vec![IncidentView {
                number: 1,
                hosts: vec!["db-1".into()],
                state: "open".into(),
                opened_at: t("2026-03-10T11:00:00Z"),
                eta: Some(t("2030-01-01T12:00:00Z")),
                eta_passed: false,
                updates: vec![UpdateView {
                    at: t("2026-03-10T11:30:00Z"),
                    text: "Disk <b>replaced</b> & 'tested'".into(),
                    eta: Some(t("2030-01-01T12:00:00Z")),
                }],
            }],
            availability: Availability::Month {
                month: "2026-03".into(),
                rows: vec![AvailabilityRow {
                    host: "db-1".into(),
                    window: "all".into(),
                    availability: 0.99512,
                    target: 0.99,
                    met: true,
                }],
            },
            maintenance: vec![MaintenanceView {
                host: "web-1".into(),
                start: t("2026-03-20T02:00:00Z"),
                end: t("2026-03-20T03:00:00Z"),
                reason: "kernel <update>".into(),
                in_progress: false,
            }],
        }
    }

    #[test]
    fn escape_covers_the_five_characters() {
        assert_eq!(escape("<a href=\"x\">'&'</a>"), "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;");
        assert_eq!(escape("plain ü"), "plain ü");
    }

    #[test]
    fn user_data_is_escaped_everywhere() {
        let html = render(&view());
        assert!(!html.contains("<script"), "{html}");
        assert!(!html.contains("<b>") && !html.contains("<update>") && !html.contains("<GmbH>"), "{html}");
        assert!(html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"), "{html}");
        assert!(html.contains("Disk &lt;b&gt;replaced&lt;/b&gt; &amp; &#39;tested&#39;"), "{html}");
        assert!(html.contains("http/&quot;shop&quot;"), "{html}");
        assert!(html.contains("<title>acme &lt;GmbH&gt; &amp; Co — service status</title>"), "{html}");
        // No scripts, no external assets: nothing is loaded from anywhere.
        for needle in ["<script", "src=", "href=", "<link", "@import", "url("] {
            assert!(!html.contains(needle), "{needle} in the page");
        }
        assert!(html.contains("<meta http-equiv=\"refresh\" content=\"60\">"));
    }

    #[test]
    fn health_maps_to_labels_and_the_worst_host_sets_the_banner() {
        let mut v = view();
        let html = render(&v);
        assert!(html.contains("<tr><td>web-1</td><td><span class=\"badge up\">Up</span>"), "{html}");
        assert!(html.contains("<span class=\"badge degraded\">Degraded</span>"), "{html}");
        assert!(html.contains("<tr><td>db-1</td><td><span class=\"badge down\">Down</span>"), "{html}");
        assert!(html.contains("id=\"overall\">Some services are down<"), "{html}");
        v.hosts.retain(|h| h.health != Health::Down);
        assert!(render(&v).contains(">Some services are degraded<"));
        v.hosts.retain(|h| h.health == Health::Up);
        assert!(render(&v).contains(">All systems operational<"));
    }

    #[test]
    fn the_eta_availability_and_maintenance_are_shown_in_the_contract_zone() {
        let html = render(&view());
        // 12:00 UTC is 13:00 in Berlin in January.
        assert!(html.contains("Expected resolution (ETA): 2030-01-01 13:00 CET"), "{html}");
        assert!(html.contains("99.512&nbsp;%") && html.contains("99.000&nbsp;%") && html.contains(">Met<"), "{html}");
        assert!(html.contains("kernel &lt;update&gt;") && html.contains("2026-03-20 03:00 CET"), "{html}");
        assert!(!html.contains("passed"), "{html}");
        let mut v = view();
        v.incidents[0].eta = None;
        assert!(render(&v).contains("No estimate of the resolution time yet."));
        v.incidents[0].eta = Some(t("2026-03-10T11:45:00Z"));
        v.incidents[0].eta_passed = true;
        let html = render(&v);
        assert!(html.contains("(ETA): 2026-03-10 12:45 CET — passed; a new estimate will follow."), "{html}");
    }

    #[test]
    fn incidents_carry_their_page_number_and_the_availability_says_it_is_so_far() {
        let mut v = view();
        v.incidents[0].number = 2;
        let html = render(&v);
        assert!(html.contains("id=\"incident-2\"") && html.contains("<strong>Incident 2</strong>"), "{html}");
        assert!(html.contains("2026-03 so far, by service window: the share of the service time from the start"));
    }
}
