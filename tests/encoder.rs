//! The optional encoder backend (feature `encoder`), on a tiny randomly initialised BERT written
//! here: loading, WordPiece tokenisation, embeddings, and router heads trained on them.
#![cfg(feature = "encoder")]

mod common;
use candle_core::{DType, Device};
use candle_nn::{VarBuilder, VarMap};
use candle_transformers::models::bert::{BertModel, Config};
use chimera::encoder::TextEncoder;
use common::tmpdir;

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
