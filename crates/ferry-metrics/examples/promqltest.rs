//! Runs Prometheus PromQL test scripts against Ferry's evaluator and prints
//! a report per file.
//!
//! ```text
//! cargo run -p ferry-metrics --example promqltest -- [-v] FILE...
//! ```
//!
//! Prints `FILE: N passed, N failed, N skipped (M native-histogram)` per file
//! and a total line; with `-v`, also one line per failed or skipped eval (its
//! line, query and why) and per line of the file that did not parse. Exits 0
//! when every file was read (the report is the result), 2 on a usage error or
//! a file that could not be read.
#![forbid(unsafe_code)]

use std::io::{self, Write};
use std::process::ExitCode;

use ferry_metrics::Engine;
use ferry_metrics::promqltest::{FileReport, run_file};

const USAGE: &str = "usage: promqltest [-v] FILE...";

fn main() -> ExitCode {
    let mut verbose = false;
    let mut files = Vec::new();
    let mut only_files = false;
    for arg in std::env::args().skip(1) {
        match arg.as_str() {
            "--" if !only_files => only_files = true,
            "-v" | "--verbose" if !only_files => verbose = true,
            "-h" | "--help" if !only_files => {
                println!("{USAGE}");
                return ExitCode::SUCCESS;
            }
            a if !only_files && a.starts_with('-') && a.len() > 1 => {
                eprintln!("promqltest: unknown option {}\n{USAGE}", clean(a));
                return ExitCode::from(2);
            }
            _ => files.push(arg),
        }
    }
    if files.is_empty() {
        eprintln!("{USAGE}");
        return ExitCode::from(2);
    }

    match report(&files, verbose) {
        Ok(code) => code,
        // The reader went away (`| head`): nothing left to say.
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("promqltest: cannot write the report: {e}");
            ExitCode::from(2)
        }
    }
}

/// Runs every file and writes the report to stdout.
fn report(files: &[String], verbose: bool) -> io::Result<ExitCode> {
    let mut out = io::stdout().lock();
    let engine = Engine::default();
    let mut total = FileReport::default();
    let mut unreadable = false;
    for path in files {
        let report = match run_file(path, &engine) {
            Ok(r) => r,
            Err(e) => {
                eprintln!("promqltest: cannot read {}: {e}", clean(path));
                unreadable = true;
                continue;
            }
        };
        let mut line = format!(
            "{}: {} passed, {} failed, {} skipped ({} native-histogram)",
            clean(path),
            report.passed,
            report.failed,
            report.skipped,
            report.skipped_histogram
        );
        if !report.errors.is_empty() {
            line.push_str(&format!(", {} unparsable lines", report.errors.len()));
        }
        writeln!(out, "{line}")?;
        if verbose {
            write_details(&mut out, &report)?;
        }
        total.passed += report.passed;
        total.failed += report.failed;
        total.skipped += report.skipped;
        total.skipped_histogram += report.skipped_histogram;
    }
    writeln!(
        out,
        "total: {} passed, {} failed, {} skipped",
        total.passed, total.failed, total.skipped
    )?;
    out.flush()?;
    Ok(if unreadable {
        ExitCode::from(2)
    } else {
        ExitCode::SUCCESS
    })
}

/// Failures, skips and unparsable lines, in line order.
fn write_details(out: &mut impl Write, report: &FileReport) -> io::Result<()> {
    let mut lines: Vec<(usize, String)> = Vec::new();
    for f in &report.failures {
        lines.push((
            f.line,
            format!(
                "  line {}: FAIL {}: {}",
                f.line,
                clean(&f.query),
                clean(&f.why)
            ),
        ));
    }
    for s in &report.skips {
        lines.push((
            s.line,
            format!(
                "  line {}: SKIP {}: {}",
                s.line,
                clean(&s.query),
                clean(&s.reason)
            ),
        ));
    }
    for e in report.errors.iter().filter(|e| e.query.is_none()) {
        lines.push((
            e.line,
            format!("  line {}: ERROR {}", e.line, clean(&e.message)),
        ));
    }
    lines.sort_by_key(|(line, _)| *line);
    for (_, text) in lines {
        writeln!(out, "{text}")?;
    }
    Ok(())
}

/// Text from the scripts and the engine, with control characters escaped
/// before it reaches a terminal.
fn clean(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}
