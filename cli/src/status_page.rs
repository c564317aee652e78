//! `pikett status-page create|list|revoke`: customer status page links (the `Admin`
//! service's `CreateStatusPage`, `ListStatusPages`, `RevokeStatusPage`).

use std::fmt::Write as _;

use pikett_proto::v1 as pb;
use serde_json::json;

use crate::client::{Client, format_time, rpc_error};

fn page_json(p: &pb::StatusPage) -> serde_json::Value {
    json!({"id": p.id, "customer": p.customer, "created": format_time(p.created_unix_ms), "created_by": p.created_by})
}

/// `pikett status-page create CUSTOMER [--force]`: prints the path with its secret, once.
pub async fn create(client: &mut Client, customer: String, force: bool, json: bool) -> anyhow::Result<String> {
    let req = pb::CreateStatusPageRequest { customer, force };
    let r = client.admin.create_status_page(client.req(req)).await.map_err(rpc_error)?.into_inner();
    let page = r.page.ok_or_else(|| anyhow::anyhow!("the collector answered without the status page"))?;
    let mut out = String::new();
    if json {
        let mut v = page_json(&page);
        v["path"] = json!(r.path);
        writeln!(out, "{v}")?;
    } else {
        writeln!(
            out,
            "status page {} for customer {} created; its path on the collector's HTTP port (shown only now):",
            page.id, page.customer
        )?;
        writeln!(out, "{}", r.path)?;
        writeln!(out, "Anyone with the link can read the page: `pikett status-page revoke {}` ends it.", page.id)?;
    }
    Ok(out)
}

/// `pikett status-page list`: ids, customers, when and by whom; never a secret.
pub async fn list(client: &mut Client, json: bool) -> anyhow::Result<String> {
    let r = client.admin.list_status_pages(client.req(pb::ListStatusPagesRequest {})).await.map_err(rpc_error)?;
    let pages = r.into_inner().pages;
    let mut out = String::new();
    if json {
        for p in &pages {
            writeln!(out, "{}", page_json(p))?;
        }
        return Ok(out);
    }
    writeln!(out, "{:>4} {:<24} {:<20} BY", "ID", "CUSTOMER", "CREATED")?;
    for p in &pages {
        writeln!(out, "{:>4} {:<24} {:<20} {}", p.id, p.customer, format_time(p.created_unix_ms), p.created_by)?;
    }
    if pages.is_empty() {
        writeln!(out, "(no status pages)")?;
    }
    Ok(out)
}

/// `pikett status-page revoke ID`.
pub async fn revoke(client: &mut Client, id: u64, json: bool) -> anyhow::Result<String> {
    let req = pb::RevokeStatusPageRequest { id };
    let p = client.admin.revoke_status_page(client.req(req)).await.map_err(rpc_error)?.into_inner();
    if json {
        return Ok(format!("{}\n", page_json(&p)));
    }
    Ok(format!("status page {} of customer {} revoked: its address answers 404 from now on\n", p.id, p.customer))
}
