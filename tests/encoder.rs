//! The optional encoder backend (feature `encoder`), on a tiny randomly initialised BERT written
//! here: loading, WordPiece tokenisation, embeddings, and router heads trained on them.
#![cfg(feature = "encoder")]

mod common;
use candle_core::{DType, Device};
use candle_nn::{VarBuilder, VarMap};
use candle_transformers::models::bert::{BertModel, Config};
use chimera::encoder::TextEncoder;
use common::{default_with, repo, run, tmpdir};

const VOCAB: &[&str] = &[
    "[PAD]", "[UNK]", "[CLS]", "[SEP]", "easy", "hard", "sum", "integral", "of", "number", "##s", "and", "two", "1",
    "2", "3", "4", "5", "6", "7", "8", "9", "0",
];

fn tiny_encoder(dir: &std::path::Path) {
    let config = serde_json::json!({
        "vocab_size": VOCAB.len(), "hidden_size": 16, "num_hidden_layers": 2, "num_attention_heads": 2,
        "intermediate_size": 32, "hidden_act": "gelu", "hidden_dropout_prob": 0.0, "max_position_embeddings": 64,
        "type_vocab_size": 2, "initializer_range": 0.02, "layer_norm_eps": 1e-12, "pad_token_id": 0,
        "classifier_dropout": null, "model_type": "bert"
    });
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    let cfg: Config = serde_json::from_value(config).unwrap();
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
    BertModel::load(vb, &cfg).unwrap();
    varmap.save(dir.join("model.safetensors")).unwrap();
    let vocab: serde_json::Map<String, serde_json::Value> = VOCAB
        .iter()
        .enumerate()
        .map(|(i, t)| (t.to_string(), serde_json::json!(i)))
        .collect();
    let tok = serde_json::json!({"normalizer": {"type": "BertNormalizer", "lowercase": true}, "model": {"type": "WordPiece", "vocab": vocab}});
    std::fs::write(dir.join("tokenizer.json"), tok.to_string()).unwrap();
}

#[test]
fn a_tiny_random_encoder_embeds_and_feeds_the_router_heads() {
    let dir = tmpdir("encoder");
    tiny_encoder(&dir);
    let enc = TextEncoder::load(&dir).unwrap();
    assert_eq!(enc.dims, 16);
    assert_eq!(
        enc.token_ids("Easy sums, two!"),
        vec![2, 4, 6, 10, 1, 12, 1, 3],
        "[CLS] easy sum ##s [UNK:,] two [UNK:!] [SEP]"
    );
    let a = enc.embed("easy sum of 2 and 3").unwrap();
    assert_eq!(a, enc.embed("easy sum of 2 and 3").unwrap(), "deterministic");
    let norm: f32 = a.iter().map(|x| x * x).sum::<f32>().sqrt();
    assert!((norm - 1.0).abs() < 1e-4);
    // Heads trained on embeddings: outcomes carried by the words "easy" and "hard".
    let texts: Vec<String> = (0..60)
        .map(|i| {
            if i % 2 == 0 {
                format!("easy sum of {} and {}", i % 10, (i / 10) % 10)
            } else {
                format!("hard integral number {}", i % 10)
            }
        })
        .collect();
    let embs: Vec<Vec<f32>> = texts.iter().map(|t| enc.embed(t).unwrap()).collect();
    let labels: Vec<Vec<bool>> = (0..60).map(|i| vec![i % 2 == 0, i % 2 == 0 || i % 4 == 1]).collect();
    let m = chimera::router::train_dense(&embs, &labels, &["small".into(), "big".into()], serde_json::json!({}));
    let r = chimera::router::Router::new(m);
    let easy = r.predict_dense(&enc.embed("easy sum of 4 and 4").unwrap());
    let hard = r.predict_dense(&enc.embed("hard integral number 4").unwrap());
    assert!(
        easy[0] > hard[0] && easy.iter().chain(&hard).all(|p| (0.0..=1.0).contains(p)),
        "{easy:?} {hard:?}"
    );
}

#[test]
fn missing_model_files_are_named() {
    let dir = tmpdir("encoder-missing");
    let e = TextEncoder::load(&dir).err().unwrap().to_string();
    assert!(e.contains("config.json"), "{e}");
    tiny_encoder(&dir);
    std::fs::remove_file(dir.join("model.safetensors")).unwrap();
    let e = TextEncoder::load(&dir).err().unwrap().to_string();
    assert!(e.contains("model.safetensors"), "{e}");
}

/// A trace whose problem texts carry the outcome (`easy`: both models solve it, `hard`: only the
/// big one), for the router commands.
fn text_trace(path: &std::path::Path, n: u64, offset: u64) {
    use chimera::workload::{Plan, Stage};
    use std::sync::Arc;
    let plan = |m: &str, solved: bool| Plan {
        model: Some(Arc::from(m)),
        stages: vec![Stage {
            prompt_tokens: 100,
            context_tokens: 0,
            output_tokens: 20,
            tool_delay_ns: 0,
            prefix: None,
            prompt_id: None,
        }],
        success: Some(solved),
    };
    let t = chimera::trace::Trace {
        models: vec!["Qwen2.5-1.5B".into(), "Qwen2.5-7B".into()],
        workflows: (0..n)
            .map(|i| {
                let easy = (i + offset) % 2 == 0;
                let text = if easy {
                    format!("easy sum of {} and {}", i % 10, (i / 10) % 10)
                } else {
                    format!("hard integral number {}", i % 10)
                };
                chimera::trace::TraceWorkflow {
                    id: i,
                    task: "math".into(),
                    problem_id: format!("q{}", i + offset),
                    difficulty: "level 5".into(),
                    text: Some(Arc::from(text.as_str())),
                    plans: vec![plan("Qwen2.5-1.5B", easy), plan("Qwen2.5-7B", easy || i % 4 == 1)],
                }
            })
            .collect(),
        provenance: serde_json::json!({"kind": "test fixture"}),
    };
    chimera::trace::write_trace(path, &t).unwrap();
}

/// An encoder router works where a text router does: `router eval` embeds the trace's texts
/// with the encoder the router was trained with (its provenance names it) or `--encoder`
/// (issue 16: it panicked with "window size must be non-zero").
#[test]
fn router_eval_of_an_encoder_router_embeds_the_texts() {
    let dir = tmpdir("encoder-router-eval");
    let enc = dir.join("enc");
    std::fs::create_dir_all(&enc).unwrap();
    tiny_encoder(&enc);
    let (train, test, router) = (
        dir.join("train.parquet"),
        dir.join("test.parquet"),
        dir.join("router.json"),
    );
    text_trace(&train, 60, 0);
    text_trace(&test, 40, 1);
    let chimera = |args: &[&str]| {
        let o = std::process::Command::new(env!("CARGO_BIN_EXE_chimera"))
            .args(args)
            .output()
            .unwrap();
        (
            o.status.code(),
            String::from_utf8_lossy(&o.stdout).to_string(),
            String::from_utf8_lossy(&o.stderr).to_string(),
        )
    };
    let s = |p: &std::path::Path| p.display().to_string();
    let (code, _, err) = chimera(&[
        "router",
        "train",
        "--trace",
        &s(&train),
        "--encoder",
        &s(&enc),
        "--out",
        &s(&router),
    ]);
    assert_eq!(code, Some(0), "{err}");
    let (router_s, test_s, enc_s) = (s(&router), s(&test), s(&enc));
    for extra in [&[][..], &["--encoder", enc_s.as_str()][..]] {
        let mut args = vec!["router", "eval", "--router", &router_s, "--trace", &test_s, "--json"];
        args.extend(extra.iter().copied());
        let (code, out, err) = chimera(&args);
        assert_eq!(code, Some(0), "{args:?}: {err}");
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["items"], 40);
        let auc = v["models"][0]["auc"].as_f64().unwrap();
        assert!(auc > 0.5, "the small model's outcome follows the words: {auc}");
    }
    // A text router takes no encoder.
    let text_router = dir.join("text-router.json");
    let (code, _, err) = chimera(&["router", "train", "--trace", &s(&train), "--out", &s(&text_router)]);
    assert_eq!(code, Some(0), "{err}");
    let (code, _, err) = chimera(&[
        "router",
        "eval",
        "--router",
        &s(&text_router),
        "--trace",
        &s(&test),
        "--encoder",
        &s(&enc),
    ]);
    assert_eq!(code, Some(2));
    assert!(err.contains("reads no embeddings"), "{err}");

    // In a scenario: the policy core routes each workflow by the router's reading of its text
    // through the encoder, and the summary reports the AUC it realised. (Not compared with
    // `router eval`'s exact figure: this random tiny encoder's scores differ by less than the
    // summary's 1/4096 bins, which count such pairs as ties.)
    let sets = [
        format!("workload={{kind: trace, path: {test_s}, arrivals: {{process: poisson, rate_per_s: 0.5}}}}"),
        "policy.routing={kind: chimera, slack: {kind: multiplicative, value: 1.0}, min_confidence_gain: 0.1}".into(),
        format!(
            "policy.length={{kind: qrf, path: {}}}",
            repo().join("models/predictor-qwen2.5-apps-math.json").display()
        ),
        format!("policy.confidence={{kind: router, path: {router_s}}}"),
    ];
    let sets: Vec<&str> = sets.iter().map(|s| s.as_str()).collect();
    let rep = run(&default_with(&sets), &dir.join("run"));
    let c = rep.summary.confidence.expect("a realised AUC");
    assert_eq!(c.by_model.len(), 2);
    let small = c.by_model[0].auc.unwrap();
    assert!(
        small > 0.5,
        "the small model's outcome follows the words: realised {small}"
    );
    assert_eq!(
        c.by_model[0].workflows, 40,
        "every workflow assessed by the encoder router"
    );
    // A text router given an encoder is refused, naming the field.
    let bad = [format!(
        "policy.confidence={{kind: router, path: {}, encoder: {enc_s}}}",
        s(&text_router)
    )];
    let mut sets2 = sets.clone();
    sets2[3] = bad[0].as_str();
    let err = chimera::scenario::load_str(
        chimera::scenario::DEFAULT_SCENARIO,
        &sets2.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
        std::path::Path::new("."),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("policy.confidence.encoder"), "{err}");
}
