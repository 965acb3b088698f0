//! Prints docs/zoo.md's table: per architecture, trainable parameters (torchvision's count
//! with 10 classes), multiply-accumulates per 1×28×28 image, the feature map entering the head,
//! and the size of the exported ONNX file (BatchNorm folded, the default).
//!
//!     cargo run --release -p exporter --example zoo_table

use exporter::{encode, lower, ExportOptions, Weights};
use models::{build, Arch, CheckpointMeta, ModelConfig, Op};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("| architecture | parameters | MMACs / image | feature map before pooling | ONNX size (MiB) |");
    println!("|---|---:|---:|---|---:|");
    for &arch in Arch::ALL {
        let config = ModelConfig::new(arch);
        let graph = build(&config)?;
        // Sizes do not depend on values: constant weights are enough (variance 1 keeps folding finite).
        let mut weights = Weights::new("zoo_table");
        for p in graph.params() {
            let n = p.shape.iter().product();
            weights.insert(p.name, p.shape, vec![1.0; n])?;
        }
        let meta = CheckpointMeta {
            model: config,
            epoch: 0,
            val_accuracy: None,
            val_loss: None,
            run_id: None,
            tracking_uri: None,
            producer: "zoo_table".into(),
        };
        let bytes = encode(&lower(&graph, &meta, &weights, &ExportOptions::default())?)?;
        // The feature map entering the head: input of the last Flatten, or of its pooling.
        let mut v = graph
            .nodes
            .iter()
            .rposition(|n| matches!(n.op, Op::Flatten))
            .map_or(graph.output, |i| graph.nodes[i].inputs[0]);
        if matches!(graph.nodes[v].op, Op::GlobalAvgPool) {
            v = graph.nodes[v].inputs[0];
        }
        let s = &graph.nodes[v].shape;
        println!(
            "| {arch} | {} | {:.1} | {}×{}×{} | {:.1} |",
            graph.num_trainable(),
            graph.macs() as f64 / 1e6,
            s[0],
            s[1],
            s[2],
            bytes.len() as f64 / (1024.0 * 1024.0)
        );
    }
    Ok(())
}
