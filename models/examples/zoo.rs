//! Prints the zoo as a Markdown table: trainable parameters, multiply-accumulates per 1×28×28
//! image, and the spatial size of the last feature map at 28×28 input.
//!
//!     cargo run --release -p models --example zoo

use models::{build, Arch, ModelConfig, Op};

fn main() -> Result<(), models::ModelsError> {
    println!("| architecture | parameters | MMACs / image | last feature map |");
    println!("|---|---:|---:|---|");
    for &arch in Arch::ALL {
        let g = build(&ModelConfig::new(arch))?;
        // The feature map entering the head: input of the last Flatten, or of its pooling.
        let mut v = g.nodes.iter().rposition(|n| matches!(n.op, Op::Flatten)).map_or(g.output, |i| g.nodes[i].inputs[0]);
        if matches!(g.nodes[v].op, Op::GlobalAvgPool) {
            v = g.nodes[v].inputs[0];
        }
        let last = &g.nodes[v].shape;
        println!("| {arch} | {} | {:.1} | {}×{}×{} |", g.num_trainable(), g.macs() as f64 / 1e6, last[0], last[1], last[2]);
    }
    Ok(())
}
