//! `llamaduo`: the operator and the command line.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use llamaduo::validate::files::{Manifests, manifest_files};
use llamaduo::validate::{Target, validate_yaml};

/// Migrate a feature from a service LLM to a small model you own.
#[derive(Parser, Debug)]
#[command(name = "llamaduo", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Print the LlamaDuoMigration CustomResourceDefinition (YAML).
    Crd,
    /// Check LlamaDuoMigration manifests offline (schema, CEL rules, semantic checks); exits
    /// non-zero listing every problem with its field path.
    Validate {
        /// Manifests to check: YAML files, or directories searched for *.yaml / *.yml (each
        /// directory and file once: a symbolic link back to one already taken is skipped, with
        /// a warning).
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        /// The manifests are for `llamaduo run` on one machine (spec.storage may be omitted).
        #[arg(long)]
        local: bool,
    },
    /// Run the controller: watch LlamaDuoMigrations and drive their rounds as Jobs.
    Operator(llamaduo::controller::OperatorArgs),
    /// Run a migration on this machine: stage processes of llamaduo-trainer, status in
    /// DIR/status.yaml; running it again resumes.
    Run(llamaduo::run::RunArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Crd => print_crd(),
        Command::Validate { paths, local } => validate(
            &paths,
            if local {
                Target::Local
            } else {
                Target::Cluster
            },
        ),
        Command::Operator(args) => tokio::runtime::Runtime::new()
            .context("starting the async runtime")
            .and_then(|rt| rt.block_on(llamaduo::controller::run(args)))
            .map(|()| ExitCode::SUCCESS),
        Command::Run(args) => tokio::runtime::Runtime::new()
            .context("starting the async runtime")
            .and_then(|rt| rt.block_on(llamaduo::run::run(args))),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn print_crd() -> anyhow::Result<ExitCode> {
    print!("{}", llamaduo::crd::crd_yaml()?);
    Ok(ExitCode::SUCCESS)
}

fn validate(paths: &[PathBuf], target: Target) -> anyhow::Result<ExitCode> {
    let Manifests { files, skipped } = manifest_files(paths)?;
    for skip in &skipped {
        eprintln!("warning: {skip}");
    }
    let (mut checked, mut failed) = (0usize, 0usize);
    for file in &files {
        let text =
            std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
        let reports = match validate_yaml(&text, target) {
            Ok(r) => r,
            Err(e) => {
                println!("{}: {e}", file.display());
                failed += 1;
                continue;
            }
        };
        for report in reports.iter().filter(|r| r.checked) {
            checked += 1;
            let object = report.object.as_deref().unwrap_or("<unnamed>");
            if report.problems.is_empty() {
                println!("{} [{}] {object}: valid", file.display(), report.index);
            } else {
                failed += 1;
                for p in &report.problems {
                    println!("{} [{}] {object}: {p}", file.display(), report.index);
                }
            }
        }
    }
    println!("{checked} LlamaDuoMigration(s) checked, {failed} with problems");
    if checked == 0 && failed == 0 {
        let names: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
        eprintln!(
            "no LlamaDuoMigration found in {} ({} YAML file(s) read; only .yaml and .yml files are read, other kinds are skipped)",
            names.join(", "),
            files.len()
        );
    }
    Ok(if failed == 0 && checked > 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
