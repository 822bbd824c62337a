//! Scenario errors, table-driven: each bad input names its field path and what was expected.

use super::*;

const SYNTHETIC: &str = include_str!("../../scenarios/synthetic.yaml");

fn resolve_text(text: &str, sets: &[&str]) -> Result<Resolved> {
    let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
    load_str(text, &sets, Path::new("."))
}

fn resolve(sets: &[&str]) -> Result<Resolved> {
    resolve_text(DEFAULT_SCENARIO, sets)
}

/// The synthetic-workload scenario, for its workload fields.
fn resolve_synthetic(sets: &[&str]) -> Result<Resolved> {
    resolve_text(SYNTHETIC, sets)
}

#[test]
fn the_default_scenario_resolves() {
    let r = resolve(&[]).unwrap();
    assert_eq!(r.engines.len(), 2);
    assert_eq!(r.models, vec!["Qwen2.5-1.5B", "Qwen2.5-7B"]);
    // vLLM's defaults on a 48 GB card.
    assert_eq!(r.engines[1].limits.max_num_batched_tokens, 2048);
    assert_eq!(r.engines[1].limits.max_num_seqs, 256);
}

#[test]
fn gpu_defaults_follow_vllm() {
    let r = resolve(&["cluster.engines[1].gpu=H100", "cluster.engines[0].gpu=A100-80GB"]).unwrap();
    assert_eq!(
        (
            r.engines[1].limits.max_num_batched_tokens,
            r.engines[1].limits.max_num_seqs
        ),
        (8192, 1024)
    );
    assert_eq!(
        (
            r.engines[0].limits.max_num_batched_tokens,
            r.engines[0].limits.max_num_seqs
        ),
        (2048, 256)
    );
}

#[test]
fn a_star_index_sets_the_field_in_every_list_entry() {
    let r = resolve(&["cluster.engines[*].gpu=H100"]).unwrap();
    assert!(
        r.engines.iter().all(|e| e.gpu == "H100-SXM"),
        "{:?}",
        r.engines.iter().map(|e| &e.gpu).collect::<Vec<_>>()
    );
    let e = resolve(&["cluster.engines[x].gpu=H100"]).unwrap_err().to_string();
    assert!(e.contains("`*` for all"), "{e}");
}

#[test]
fn bad_fields_name_their_path_and_what_was_expected() {
    let cases: &[(&[&str], &[&str])] = &[
        (
            &["cluster.engines[0].gpux=A40"],
            &["cluster.engines[0]", "unknown field `gpux`", "expected one of"],
        ),
        (
            &["cluster.engines[1].gpu=V100"],
            &["cluster.engines[1].gpu", "unknown GPU `V100`", "RTX-A6000", "H200"],
        ),
        (
            &["cluster.engines[0].model=GPT-5"],
            &["cluster.engines[0].model", "unknown model", "Qwen2.5-72B"],
        ),
        (
            &["cluster.engines[0].tensor_parallel=3"],
            &["cluster.engines[0].tensor_parallel", "expected 1, 2, 4 or 8"],
        ),
        (
            &["cluster.engines[0].expert_parallel=2"],
            &["cluster.engines[0].expert_parallel", "dense model", "expected 1"],
        ),
        (
            &[
                "cluster.engines[0].model=Qwen3-30B-A3B",
                "cluster.engines[0].expert_parallel=3",
            ],
            &[
                "cluster.engines[0].expert_parallel",
                "expected 1, 2, 4, 8 or 16",
                "got 3",
            ],
        ),
        (
            &["cluster.engines[0].replicas=zero"],
            &["cluster.engines[0].replicas", "invalid type"],
        ),
        (
            &["cluster.engines[0].gpu_memory_utilization=1.5"],
            &["gpu_memory_utilization", "(0, 1]"],
        ),
        (
            &["cluster.engines[0].scheduling=lifo"],
            &[
                "cluster.engines[0].scheduling",
                "unknown variant `lifo`",
                "fcfs",
                "priority",
            ],
        ),
        (
            &["policy.routing.fractions[Qwen2.5-7B]=0.7"],
            &["policy.routing.fractions", "sum to 1", "1.2"],
        ),
        (
            &["policy.routing.fractions.\"Qwen2.5-3B\"=0.0"],
            &[
                "policy.routing.fractions.Qwen2.5-3B",
                "no engine serves",
                "Qwen2.5-1.5B, Qwen2.5-7B",
            ],
        ),
        (
            &["policy.routing.kind=random"],
            &[
                "policy.routing",
                "unknown variant `random`",
                "fixed_fraction",
                "least_outstanding",
            ],
        ),
        (
            &["workload.kind=poisson"],
            &["workload", "unknown variant `poisson`", "synthetic", "azure_trace"],
        ),
        (
            &["workload.output_tokens.cv=-1"],
            &["workload.output_tokens", "cv must be > 0"],
        ),
        (
            &["workload.stages.weights=[1, 2]"],
            &["workload.stages", "weights has 2 entries but values has 4"],
        ),
        (
            &["workload.arrivals.process=gamma"],
            &["workload.arrivals", "missing field `cv`"],
        ),
        (
            &["workload.arrivals={process: gamma, rate_per_s: 1, cv: 0}"],
            &["workload.arrivals.cv", "between 0.01 and 100"],
        ),
        // Issue 15's hostile inputs: numbers the simulation cannot represent are refused.
        (
            &["workload.arrivals={process: gamma, rate_per_s: 1, cv: 1e200}"],
            &["workload.arrivals.cv", "between 0.01 and 100", "got 1e200"],
        ),
        (
            &["workload.arrivals={process: poisson, rate_per_s: 1e300, rate_scale: 1e300}"],
            &["workload.arrivals.rate_scale", "(0, 1e6]"],
        ),
        (
            &["workload.arrivals.rate_per_s=1e-9"],
            &["workload.arrivals.rate_per_s", "between 1e-6 and 1e7"],
        ),
        (
            &["workload.output_tokens={dist: lognormal, mean: 100, cv: 1e200}"],
            &["workload.output_tokens", "cannot be simulated"],
        ),
        (
            &["workload.tool_delay_ms={dist: constant, value: 1e300}"],
            &["workload.tool_delay_ms", "cannot be simulated"],
        ),
        (
            &["workload.success_probability={Qwen2.5-7B: 0.5}"],
            &["workload.success_probability", "missing Qwen2.5-1.5B"],
        ),
        (
            &["workload.success_probability={Qwen2.5-7B: 1.5, Qwen2.5-1.5B: 0.2}"],
            &["workload.success_probability.Qwen2.5-7B", "probability in [0, 1]"],
        ),
        (
            &["workload.max_prompt_tokens=40000"],
            &["workload.max_prompt_tokens", "smallest max_model_len"],
        ),
        (
            &["cluster.engines[0].max_model_len=100000"],
            &["cluster.engines[0].max_model_len", "2..=32768"],
        ),
        // A stage count the generator would have clamped to 8 in silence.
        (
            &["workload.stages={dist: constant, value: 1e9}"],
            &["workload.stages", "1..64 stages", "1000000000"],
        ),
        (
            &["workload.stages={dist: lognormal, mean: 2, cv: 1}"],
            &["workload.stages", "give `min` and `max`"],
        ),
        (
            &["workload.output_scale={Qwen2.5-7B: 1e300}"],
            &["workload.output_scale.Qwen2.5-7B", "(0, 1000]", "1e300"],
        ),
        (&["cluster.engines=[]"], &["cluster.engines", "at least one engine"]),
        (&["seed=-4"], &["seed", "invalid value"]),
    ];
    for (sets, wants) in cases {
        let synthetic_field = sets.iter().any(|s| {
            [
                "workload.output_tokens",
                "workload.stages",
                "workload.success_probability",
                "workload.max_prompt_tokens",
                "workload.tool_delay_ms",
                "workload.output_scale",
            ]
            .iter()
            .any(|f| s.starts_with(f))
        });
        let e = match if synthetic_field {
            resolve_synthetic(sets)
        } else {
            resolve(sets)
        } {
            Ok(_) => panic!("{sets:?} should fail"),
            Err(e) => e,
        };
        assert_eq!(e.exit_code(), 2, "{sets:?}: bad input exits 2");
        let msg = e.to_string();
        for w in *wants {
            assert!(msg.contains(w), "{sets:?}: `{msg}` should mention `{w}`");
        }
    }
}

#[test]
fn models_that_do_not_fit_are_refused_with_numbers() {
    let e = resolve(&["cluster.engines[1].model=Qwen2.5-72B"])
        .unwrap_err()
        .to_string();
    assert!(e.starts_with("cluster.engines[1]: Qwen2.5-72B does not fit"), "{e}");
    assert!(e.contains("GiB"));
    let swap = [
        "cluster.engines[1].model=Qwen1.5-14B",
        "workload.max_prompt_tokens=4000",
        "policy.routing={kind: round_robin}",
    ];
    let e = resolve_synthetic(&swap).unwrap_err().to_string();
    assert!(
        e.contains("max_model_len 32768") && e.contains("decrease max_model_len"),
        "{e}"
    );
    resolve_synthetic(&[swap[0], swap[1], swap[2], "cluster.engines[1].max_model_len=8192"]).unwrap();
    // Generated workflows may carry 30,000-token prompts: an 8K engine cannot take them.
    let e = resolve(&[swap[0], swap[2], "cluster.engines[1].max_model_len=8192"])
        .unwrap_err()
        .to_string();
    assert!(e.contains("30000") && e.contains("8192"), "{e}");
}

#[test]
fn duplicate_engine_names_are_refused() {
    let e = resolve(&["cluster.engines[1].name=qwen2.5-1.5b"])
        .unwrap_err()
        .to_string();
    assert!(e.contains("cluster.engines[1].name") && e.contains("used twice"), "{e}");
}

#[test]
fn replicas_get_their_own_names() {
    let r = resolve(&["cluster.engines[1].replicas=3"]).unwrap();
    let names: Vec<&str> = r.engines.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(
        names,
        vec!["qwen2.5-1.5b", "qwen2.5-7b-r0", "qwen2.5-7b-r1", "qwen2.5-7b-r2"]
    );
}
