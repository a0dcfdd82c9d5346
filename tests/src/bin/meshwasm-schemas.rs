//! `meshwasm-schemas [--check]`: writes the JSON Schemas of the filters' configurations and of
//! `meshwasm-host serve`'s file into `schemas/` (`make schemas`), or with `--check` only reports
//! which committed ones differ. The serve schema comes from `meshwasm-host schema`: the binary next
//! to this one (build it first; `make schemas` does).

use std::process::ExitCode;

use meshwasm_tests::schemas::{filter_schemas, render, schema_dir, serve_schema};

fn main() -> ExitCode {
    let check = std::env::args().any(|a| a == "--check");
    let mut all: Vec<(String, serde_json::Value)> =
        filter_schemas().into_iter().map(|(name, s)| (format!("{name}.schema.json"), s)).collect();
    let host = std::env::current_exe().ok().and_then(|p| p.parent().map(|d| d.join("meshwasm-host")));
    match host.as_deref().map(serve_schema) {
        Some(Ok(s)) => all.push(("serve.schema.json".into(), s)),
        Some(Err(e)) => {
            eprintln!("meshwasm-schemas: {e:#} (build it: cargo build -p meshwasm-host)");
            return ExitCode::FAILURE;
        }
        None => return ExitCode::FAILURE,
    }
    let dir = schema_dir();
    let mut stale = 0;
    for (file, schema) in all {
        let path = dir.join(&file);
        let text = render(&schema);
        if std::fs::read_to_string(&path).ok().as_deref() == Some(text.as_str()) {
            continue;
        }
        stale += 1;
        if check {
            println!("out of date: schemas/{file}");
        } else if let Err(e) = std::fs::create_dir_all(&dir).and_then(|()| std::fs::write(&path, text)) {
            eprintln!("meshwasm-schemas: writing {}: {e}", path.display());
            return ExitCode::FAILURE;
        } else {
            println!("wrote schemas/{file}");
        }
    }
    if check && stale > 0 { ExitCode::FAILURE } else { ExitCode::SUCCESS }
}
