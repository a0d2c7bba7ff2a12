//! `seqbench`: end-to-end sequencer benchmark. See `domain_benches::seqbench` and
//! docs/benchmarks.md. Run with
//! `cargo run --release -p domain-benches --bin seqbench -- --senders 4 --subscribers 2`.

use clap::Parser as _;
use domain_benches::cli::Args;

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let json = args.json.clone();
    let summary = runtime.block_on(domain_benches::seqbench::run(args))?;
    println!("{}", summary.render());
    if let Some(path) = json {
        std::fs::write(&path, serde_json::to_string_pretty(&summary)?)?;
        eprintln!("seqbench: JSON summary written to {}", path.display());
    }
    Ok(())
}
