//! The file front end of `pikett-collector sla`: reads the contract and the CSV files and
//! hands their texts, named by path, to the pure computation in `pikett_core::sla::offline`.

use std::path::Path;

use pikett_core::sla::{ReportRow, SlaError, run_offline_named};

/// `run_offline` on files; errors name the file.
pub fn run_offline_files(
    contract: &Path,
    outages: &Path,
    maintenance: Option<&Path>,
    month: &str,
) -> Result<Vec<ReportRow>, SlaError> {
    let read =
        |p: &Path| std::fs::read_to_string(p).map_err(|source| SlaError::Io { path: p.display().to_string(), source });
    let contract_text = read(contract)?;
    let outages_text = read(outages)?;
    let maintenance_text = maintenance.map(read).transpose()?;
    let (cn, on) = (contract.display().to_string(), outages.display().to_string());
    let mn = maintenance.map(|p| p.display().to_string());
    run_offline_named(
        (&cn, &contract_text),
        (&on, &outages_text),
        mn.as_deref().zip(maintenance_text.as_deref()),
        month,
    )
}
