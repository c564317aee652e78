//! The docs keep up with the code: every key the agent's and the collector's config
//! files accept appears in `docs/configuration.md`.
//!
//! The keys are read from the source with `syn`: the fields of every struct that derives
//! `Deserialize` with `#[serde(deny_unknown_fields)]` (the project's rule for config
//! structs: unknown keys are errors), outside test modules, spelled as serde spells them
//! (`rename`, `rename_all`, `alias`; `flatten`ed and skipped fields have no key of their own).

use std::path::{Path, PathBuf};

use syn::visit::Visit;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root").to_path_buf()
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<PathBuf> =
        std::fs::read_dir(dir).expect("read src dir").map(|e| e.expect("entry").path()).collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|e| e == "rs") {
            out.push(p);
        }
    }
}

/// The `serde(...)` arguments of an item's or field's attributes, as `(name, string value)`.
fn serde_args(attrs: &[syn::Attribute]) -> Vec<(String, Option<String>)> {
    let mut out = Vec::new();
    for attr in attrs.iter().filter(|a| a.path().is_ident("serde")) {
        let _ = attr.parse_nested_meta(|meta| {
            let name = meta.path.get_ident().map(|i| i.to_string()).unwrap_or_default();
            let value = if meta.input.peek(syn::Token![=]) {
                let lit: syn::Lit = meta.value()?.parse()?;
                match lit {
                    syn::Lit::Str(s) => Some(s.value()),
                    _ => None,
                }
            } else {
                // Skip nested arguments such as `default = "..."` forms we do not need.
                if meta.input.peek(syn::token::Paren) {
                    let _content;
                    syn::parenthesized!(_content in meta.input);
                }
                None
            };
            out.push((name, value));
            Ok(())
        });
    }
    out
}

fn derives_deserialize(attrs: &[syn::Attribute]) -> bool {
    attrs.iter().filter(|a| a.path().is_ident("derive")).any(|a| {
        let mut found = false;
        let _ = a.parse_nested_meta(|m| {
            found |= m.path.segments.last().is_some_and(|s| s.ident == "Deserialize");
            Ok(())
        });
        found
    })
}

fn is_cfg_test(attrs: &[syn::Attribute]) -> bool {
    attrs.iter().any(|a| match &a.meta {
        syn::Meta::List(l) if l.path.is_ident("cfg") => l.tokens.to_string().contains("test"),
        _ => false,
    })
}

fn rename(ident: &str, rule: Option<&str>) -> String {
    match rule {
        Some("kebab-case") => ident.replace('_', "-"),
        Some("lowercase") => ident.to_lowercase(),
        Some("UPPERCASE") => ident.to_uppercase(),
        Some("camelCase") | Some("PascalCase") => {
            let mut out = String::new();
            let mut upper = rule == Some("PascalCase");
            for c in ident.chars() {
                if c == '_' {
                    upper = true;
                } else if upper {
                    out.extend(c.to_uppercase());
                    upper = false;
                } else {
                    out.push(c);
                }
            }
            out
        }
        _ => ident.to_string(),
    }
}

/// (struct, key, file) for every config key.
struct Keys {
    file: PathBuf,
    keys: Vec<(String, String, PathBuf)>,
}

impl<'ast> Visit<'ast> for Keys {
    fn visit_item_mod(&mut self, m: &'ast syn::ItemMod) {
        if !is_cfg_test(&m.attrs) {
            syn::visit::visit_item_mod(self, m);
        }
    }

    fn visit_item_struct(&mut self, s: &'ast syn::ItemStruct) {
        let container = serde_args(&s.attrs);
        if !derives_deserialize(&s.attrs) || !container.iter().any(|(n, _)| n == "deny_unknown_fields") {
            return;
        }
        let rule = container.iter().find(|(n, _)| n == "rename_all").and_then(|(_, v)| v.clone());
        for field in &s.fields {
            let Some(ident) = &field.ident else { continue };
            let args = serde_args(&field.attrs);
            if args.iter().any(|(n, _)| ["flatten", "skip", "skip_deserializing"].contains(&n.as_str())) {
                continue;
            }
            let ident = ident.to_string();
            let ident = ident.trim_start_matches("r#");
            let key = args
                .iter()
                .find(|(n, v)| n == "rename" && v.is_some())
                .and_then(|(_, v)| v.clone())
                .unwrap_or_else(|| rename(ident, rule.as_deref()));
            self.keys.push((s.ident.to_string(), key, self.file.clone()));
            for (_, alias) in args.iter().filter(|(n, _)| n == "alias") {
                if let Some(a) = alias {
                    self.keys.push((s.ident.to_string(), a.clone(), self.file.clone()));
                }
            }
        }
    }
}

fn config_keys() -> Vec<(String, String, PathBuf)> {
    let mut files = Vec::new();
    for krate in ["agent", "collector", "core"] {
        rust_files(&root().join(krate).join("src"), &mut files);
    }
    let mut keys = Keys { file: PathBuf::new(), keys: Vec::new() };
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        let ast = syn::parse_file(&text).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        keys.file = file;
        keys.visit_file(&ast);
    }
    keys.keys
}

#[test]
fn every_config_key_the_code_accepts_is_in_the_reference() {
    let keys = config_keys();
    // The walk itself works: it finds keys every config has.
    for known in
        ["collectors", "spool_max_bytes", "tls_fingerprint", "max_concurrent_commands", "data_dir", "prune_every"]
    {
        assert!(keys.iter().any(|(_, k, _)| k == known), "the source walk missed {known}: {} keys", keys.len());
    }
    assert!(keys.len() > 150, "only {} keys found", keys.len());
    let reference = root().join("docs/configuration.md");
    let text = std::fs::read_to_string(&reference).unwrap_or_else(|e| panic!("{}: {e}", reference.display()));
    let missing: Vec<String> = keys
        .iter()
        .filter(|(_, key, _)| !text.contains(&format!("`{key}`")))
        .map(|(s, key, file)| format!("`{key}` ({s} in {})", file.strip_prefix(root()).unwrap_or(file).display()))
        .collect();
    assert!(missing.is_empty(), "keys missing from {}:\n{}", reference.display(), missing.join("\n"));
}

#[test]
fn the_docs_point_nowhere_outside_the_repository() {
    let mut files = vec![root().join("README.md"), root().join("ARCHITECTURE.md"), root().join("BENCHMARKS.md")];
    for dir in ["docs", "packaging"] {
        for entry in std::fs::read_dir(root().join(dir)).expect("read dir") {
            let p = entry.expect("entry").path();
            if p.extension().is_some_and(|e| e == "md" || e == "toml") {
                files.push(p);
            }
        }
    }
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        for needle in OUTSIDE_REFERENCES {
            assert!(!text.contains(needle), "{} mentions {needle}", f.display());
        }
    }
}

/// References to documents that are not part of the repository (a product specification,
/// files beside the checkout): they dangle for every reader.
const OUTSIDE_REFERENCES: [&str; 4] = ["SPEC.md", "../shared", "SPEC's", "SPEC section"];

/// Every `.rs`, `.proto` and `.toml` file under `dir`, `target/` left out.
fn source_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<PathBuf> =
        std::fs::read_dir(dir).expect("read source dir").map(|e| e.expect("entry").path()).collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            if p.file_name().is_some_and(|n| n != "target") {
                source_files(&p, out);
            }
        } else if p.extension().is_some_and(|e| e == "rs" || e == "proto" || e == "toml") {
            out.push(p);
        }
    }
}

#[test]
fn the_source_points_nowhere_outside_the_repository() {
    let this_file = root().join("tests/tests/docs.rs");
    let mut files = Vec::new();
    for dir in ["agent", "collector", "cli", "core", "proto", "support", "tests", "xtask"] {
        source_files(&root().join(dir), &mut files);
    }
    assert!(files.len() > 100, "the source walk found only {} files", files.len());
    assert!(files.iter().any(|f| f.extension().is_some_and(|e| e == "proto")), "the source walk found no .proto file");
    let mut skipped = false;
    let mut found = Vec::new();
    for f in files {
        if f == this_file {
            skipped = true; // this file names the needles
            continue;
        }
        let text = std::fs::read_to_string(&f).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        for needle in OUTSIDE_REFERENCES {
            if text.contains(needle) {
                found.push(format!("{} mentions {needle}", f.strip_prefix(root()).unwrap_or(&f).display()));
            }
        }
    }
    assert!(skipped, "the source walk missed {}", this_file.display());
    assert!(found.is_empty(), "point to docs/ or say it in plain words instead:\n{}", found.join("\n"));
}
