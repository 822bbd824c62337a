//! Optional semantic-router backend (cargo feature `encoder`): a BERT-family text encoder run
//! with candle on the CPU, loaded from local model files (`config.json`, `model.safetensors`,
//! `tokenizer.json` with a WordPiece vocabulary, as all-MiniLM-L6-v2 ships them). Texts become
//! mean-pooled, L2-normalised embeddings; the router's heads are trained on them exactly as on
//! TF-IDF features (`router::train_dense`). This module reads the model files; the router and
//! policy core never do.

use crate::error::{Error, Result};
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{BertModel, Config};
use std::collections::HashMap;
use std::path::Path;

pub struct TextEncoder {
    model: BertModel,
    vocab: HashMap<String, u32>,
    lowercase: bool,
    cls: u32,
    sep: u32,
    unk: u32,
    max_len: usize,
    pub dims: usize,
}

fn read_json(path: &Path) -> Result<serde_json::Value> {
    let text = crate::input::read_text(&path)?;
    serde_json::from_str(&text).map_err(|e| Error::bad(format!("{}: {e}", path.display())))
}

impl TextEncoder {
    /// Load an encoder from a folder with config.json, model.safetensors and tokenizer.json.
    pub fn load(dir: &Path) -> Result<TextEncoder> {
        let cfg_path = dir.join("config.json");
        let config: Config = serde_json::from_value(read_json(&cfg_path)?)
            .map_err(|e| Error::bad(format!("{}: not a BERT config: {e}", cfg_path.display())))?;
        let tok_path = dir.join("tokenizer.json");
        let tok = read_json(&tok_path)?;
        let vocab_v = tok["model"]["vocab"].as_object().ok_or_else(|| {
            Error::bad(format!(
                "{}: no model.vocab map (a WordPiece tokenizer is expected)",
                tok_path.display()
            ))
        })?;
        let vocab: HashMap<String, u32> = vocab_v
            .iter()
            .filter_map(|(k, v)| v.as_u64().map(|id| (k.clone(), id as u32)))
            .collect();
        let lowercase = tok["normalizer"]["lowercase"].as_bool().unwrap_or(true);
        let id = |t: &str| {
            vocab
                .get(t)
                .copied()
                .ok_or_else(|| Error::bad(format!("{}: the vocabulary lacks {t}", tok_path.display())))
        };
        let (cls, sep, unk) = (id("[CLS]")?, id("[SEP]")?, id("[UNK]")?);
        let weights = dir.join("model.safetensors");
        if !weights.exists() {
            return Err(Error::bad(format!("{}: missing", weights.display())));
        }
        // Safety: the file is memory-mapped read-only and not modified while mapped.
        let vb = unsafe { VarBuilder::from_mmaped_safetensors(&[weights.clone()], DType::F32, &Device::Cpu) }
            .map_err(|e| Error::bad(format!("{}: {e}", weights.display())))?;
        let model = BertModel::load(vb, &config).map_err(|e| Error::bad(format!("{}: {e}", weights.display())))?;
        Ok(TextEncoder {
            model,
            vocab,
            lowercase,
            cls,
            sep,
            unk,
            max_len: config.max_position_embeddings.min(512),
            dims: config.hidden_size,
        })
    }

    /// BERT basic tokenisation (lowercase, split on whitespace and punctuation) then greedy
    /// longest-match WordPiece with `##` continuations.
    pub fn token_ids(&self, text: &str) -> Vec<u32> {
        let text = if self.lowercase {
            text.to_lowercase()
        } else {
            text.to_string()
        };
        let mut words: Vec<String> = Vec::new();
        let mut cur = String::new();
        for c in text.chars() {
            if c.is_whitespace() {
                if !cur.is_empty() {
                    words.push(std::mem::take(&mut cur));
                }
            } else if c.is_ascii_punctuation() || (!c.is_alphanumeric() && !c.is_whitespace()) {
                if !cur.is_empty() {
                    words.push(std::mem::take(&mut cur));
                }
                words.push(c.to_string());
            } else {
                cur.push(c);
            }
        }
        if !cur.is_empty() {
            words.push(cur);
        }
        let mut ids = vec![self.cls];
        'words: for w in words {
            let chars: Vec<char> = w.chars().collect();
            let mut start = 0;
            let mut pieces = Vec::new();
            while start < chars.len() {
                let mut end = chars.len();
                let mut found = None;
                while end > start {
                    let sub: String = chars[start..end].iter().collect();
                    let key = if start > 0 { format!("##{sub}") } else { sub };
                    if let Some(&id) = self.vocab.get(&key) {
                        found = Some(id);
                        break;
                    }
                    end -= 1;
                }
                match found {
                    Some(id) => {
                        pieces.push(id);
                        start = end;
                    }
                    None => {
                        ids.push(self.unk);
                        continue 'words;
                    }
                }
            }
            ids.extend(pieces);
        }
        ids.truncate(self.max_len - 1);
        ids.push(self.sep);
        ids
    }

    /// The text's embedding: mean of the last hidden states, L2-normalised.
    pub fn embed(&self, text: &str) -> Result<Vec<f32>> {
        let ids = self.token_ids(text);
        let run = || -> candle_core::Result<Vec<f32>> {
            let input = Tensor::new(ids.as_slice(), &Device::Cpu)?.unsqueeze(0)?;
            let types = input.zeros_like()?;
            let hidden = self.model.forward(&input, &types, None)?; // (1, tokens, hidden)
            let mean = hidden.mean(1)?.squeeze(0)?;
            let norm = mean.sqr()?.sum_all()?.sqrt()?.to_scalar::<f32>()?.max(1e-12);
            (mean / norm as f64)?.to_vec1::<f32>()
        };
        run().map_err(|e| Error::other(format!("encoder: {e}")))
    }
}
