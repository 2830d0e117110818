use proptest::prelude::*;

use super::*;

const STREAMED: Residency = Residency::Streamed { slots: 2 };
const PINNED: Placed = Placed::Streamed(Tier::Pinned);
const FILE: Placed = Placed::Streamed(Tier::File);

fn sizes(fixed: u64, layers: &[u64]) -> ModelBytes {
    ModelBytes {
        fixed_bytes: fixed,
        layer_bytes: layers.to_vec(),
    }
}

#[test]
fn everything_resident_when_it_fits() {
    let p = Placement::default()
        .plan(&sizes(10, &[10, 10, 10]), 40, 0)
        .unwrap();
    assert_eq!(p.layers, vec![Placed::Resident; 3]);
    assert_eq!(
        (p.slots, p.slot_bytes, p.gpu_bytes, p.host_bytes),
        (0, 0, 40, 0)
    );
    assert!(!p.streams());
    let empty = Placement::default().plan(&sizes(0, &[]), 0, 0).unwrap();
    assert!(empty.layers.is_empty());
}

#[test]
fn auto_streams_the_tail_through_slots_of_the_largest_streamed_layer() {
    // 45 bytes: all (50) do not fit; fixed 10 leave 35; two resident (20) + 2 slots of 10 is
    // 40 > 35; one resident (10) + 20 of slots fits.
    let p = Placement::default()
        .plan(&sizes(10, &[10; 4]), 45, 100)
        .unwrap();
    assert_eq!(p.layers, vec![Placed::Resident, PINNED, PINNED, PINNED]);
    assert_eq!((p.slots, p.slot_bytes, p.gpu_bytes), (2, 10, 40));
    assert_eq!(
        (
            p.host_bytes,
            p.streamed_bytes_per_step,
            p.file_bytes_per_step
        ),
        (30, 30, 0)
    );
    // Slots are sized by the streamed layers only: a large first layer stays resident.
    let p = Placement::default()
        .plan(&sizes(0, &[40, 5, 5, 5]), 52, 100)
        .unwrap();
    assert_eq!(p.layers, vec![Placed::Resident, PINNED, PINNED, PINNED]);
    assert_eq!(p.slot_bytes, 5);
}

#[test]
fn the_host_budget_splits_streamed_layers_between_pinned_and_file() {
    // Streamed: layers 1..5 (10 each). Host 35: 20 of staging, then one pinned layer.
    let p = Placement::default()
        .plan(&sizes(0, &[10; 5]), 30, 35)
        .unwrap();
    assert_eq!(p.layers, vec![Placed::Resident, PINNED, FILE, FILE, FILE]);
    assert_eq!((p.host_bytes, p.file_bytes_per_step), (30, 30));
    assert!(
        p.summary()
            .contains("1 from pinned host memory, 3 from the file"),
        "{}",
        p.summary()
    );
    // Below the staging: refused, naming the flag.
    let e = Placement::default()
        .plan(&sizes(0, &[10; 5]), 30, 19)
        .unwrap_err();
    assert_eq!(
        e,
        PlacementError::HostBudget {
            staging_bytes: 20,
            budget_bytes: 19
        }
    );
    assert!(e.to_string().contains("--host-memory"), "{e}");
}

#[test]
fn budgets_below_the_fixed_weights_and_slots_are_refused() {
    let e = Placement::default()
        .plan(&sizes(20, &[10, 10]), 39, 100)
        .unwrap_err();
    match &e {
        PlacementError::GpuBudget {
            needed_bytes,
            budget_bytes,
            ..
        } => {
            assert_eq!((*needed_bytes, *budget_bytes), (40, 39));
        }
        e => panic!("unexpected: {e}"),
    }
    assert!(e.to_string().contains("--gpu-memory"), "{e}");
    // A resident plan that does not fit says so (and that streaming is the way out).
    let e = Placement::resident()
        .plan(&sizes(0, &[10, 10]), 15, 100)
        .unwrap_err();
    assert!(e.to_string().contains("every layer resident"), "{e}");
}

#[test]
fn explicit_plans_are_checked_and_kept() {
    let p = Placement::per_layer(vec![Residency::Resident, STREAMED]);
    assert!(!p.is_all_resident());
    let plan = p.plan(&sizes(0, &[10, 10]), 30, 100).unwrap();
    assert_eq!(plan.layers, vec![Placed::Resident, PINNED]);
    assert_eq!(plan.gpu_bytes, 30);
    let err = p.check(3).unwrap_err();
    assert_eq!(
        err,
        PlacementError::LayerCount {
            planned: 2,
            model: 3
        }
    );
    assert!(err
        .to_string()
        .contains("names 2 layers but the model has 3"));
    let z = Placement::per_layer(vec![Residency::Resident, Residency::Streamed { slots: 0 }]);
    assert_eq!(z.check(2), Err(PlacementError::NoSlots { layer: 1 }));
    let u = Placement::uniform(Residency::Streamed { slots: 0 });
    assert_eq!(u.check(4), Err(PlacementError::NoSlots { layer: 0 }));
    assert!(Placement::resident().is_all_resident());
    assert!(!Placement::default().is_all_resident());
}

#[test]
fn summary_and_names_read_well() {
    assert_eq!(STREAMED.to_string(), "streamed through 2 GPU slots");
    let p = Placement::default()
        .plan(&sizes(0, &[1 << 20; 4]), 3 << 20, 1 << 30)
        .unwrap();
    let s = p.summary();
    assert!(s.starts_with("1 of 4 layers resident"), "{s}");
    assert!(s.contains("3 streamed through 2 slots of 1 MiB"), "{s}");
    assert_eq!(default_host_budget(100 << 30), 90 << 30);
    assert_eq!(default_host_budget(10 << 30), 8 << 30);
    assert_eq!(default_host_budget(1 << 30), 0);
}

#[test]
fn sizes_parse_as_users_write_them() {
    assert_eq!(parse_bytes("123"), Ok(123));
    assert_eq!(parse_bytes("24GiB"), Ok(24 << 30));
    assert_eq!(parse_bytes("24G"), Ok(24 << 30));
    assert_eq!(parse_bytes("24 gib"), Ok(24 << 30));
    assert_eq!(parse_bytes("1.5TiB"), Ok(3 << 39));
    assert_eq!(parse_bytes("512M"), Ok(512 << 20));
    assert_eq!(parse_bytes("20GB"), Ok(20_000_000_000));
    assert_eq!(parse_bytes("4k"), Ok(4096));
    for bad in ["", "GiB", "-1G", "12 parsecs", "1e30TiB", "1.2.3G"] {
        let e = parse_bytes(bad).unwrap_err();
        assert!(e.contains("24GiB"), "{bad}: {e}");
    }
}

#[test]
fn host_ffn_balances_the_host_against_pcie() {
    // 16 layers of 1 GB attention + 2 GB FFN; PCIe 50 GB/s, host 75 GB/s: all streamed is
    // 48 GB / 50 = 0.96 s; c host layers cost max(2c/75, (48 - 2c)/50) → c = 14.4 → 14.
    let layers = vec![(1_000_000_000, 2_000_000_000); 16];
    assert_eq!(host_ffn_layers(&layers, 0, 50.0, 75.0, 0.0), 14);
    // A host much faster than PCIe: every layer's FFN on the host (the attention copies,
    // 16 GB / 50, remain).
    assert_eq!(host_ffn_layers(&layers, 0, 50.0, 1000.0, 0.0), 16);
    // A slow host never pays: streaming alone wins.
    assert_eq!(host_ffn_layers(&layers, 0, 50.0, 1.0, 0.0), 0);
    // No bandwidth measured: nothing on the host.
    assert_eq!(host_ffn_layers(&layers, 0, 0.0, 75.0, 0.0), 0);
    assert_eq!(host_ffn_layers(&[], 10, 50.0, 75.0, 0.0), 0);
    // A per-layer overhead moves the balance towards fewer host layers.
    assert!(host_ffn_layers(&layers, 0, 50.0, 75.0, 0.01) < 14);
}

proptest! {
    /// The hybrid split never predicts a slower token than streaming alone.
    #[test]
    fn host_ffn_never_predicts_slower(
        n in 0usize..40, attn in 1u64..1000, ffn in 1u64..2000, other in 0u64..10_000,
        h2d in 1.0f64..100.0, host in 0.1f64..200.0,
    ) {
        let layers = vec![(attn, ffn); n];
        let c = host_ffn_layers(&layers, other, h2d, host, 0.0);
        prop_assert!(c <= n);
        let all = (attn + ffn) * n as u64 + other;
        let t = |c: u64| ((c * ffn) as f64 / host).max((all - c * ffn) as f64 / h2d);
        prop_assert!(t(c as u64) <= t(0));
    }

    /// Every byte count parses back to itself, and so does every whole number of GiB.
    #[test]
    fn byte_counts_round_trip(bytes in 0u64..(1 << 52), gib in 0u64..4096) {
        prop_assert_eq!(parse_bytes(&bytes.to_string()), Ok(bytes));
        prop_assert_eq!(parse_bytes(&format!("{gib}GiB")), Ok(gib << 30));
    }


    /// Whatever the sizes and budgets: a plan fits both budgets, its byte counts add up, the
    /// streamed layers are one run at the end, the pinned ones one run before the file ones;
    /// and a refusal means no split would have fit.
    #[test]
    fn plans_fit_their_budgets(
        layers in proptest::collection::vec(1u64..1000, 0..40),
        fixed in 0u64..2000,
        reserve in 0u64..2000,
        gpu in 0u64..40_000,
        host in 0u64..40_000,
        slots in 1usize..4,
    ) {
        let bytes = sizes(fixed + reserve, &layers);
        let placement = Placement { plan: Plan::Fit { slots }, budget: Budget::default() };
        match placement.plan(&bytes, gpu, host) {
            Ok(p) => {
                prop_assert_eq!(p.layers.len(), layers.len());
                prop_assert!(p.gpu_bytes <= gpu);
                prop_assert!(p.host_bytes <= host);
                let resident: u64 = layers.iter().zip(&p.layers)
                    .filter(|(_, &pl)| pl == Placed::Resident).map(|(b, _)| b).sum();
                prop_assert_eq!(p.gpu_bytes, fixed + reserve + resident + p.slot_bytes * p.slots as u64);
                let streamed: u64 = layers.iter().sum::<u64>() - resident;
                prop_assert_eq!(p.streamed_bytes_per_step, streamed);
                let first_streamed = p.layers.iter().position(|&l| l != Placed::Resident);
                if let Some(f) = first_streamed {
                    prop_assert!(p.layers[f..].iter().all(|&l| l != Placed::Resident));
                    let first_file = p.layers.iter().position(|&l| l == FILE).unwrap_or(layers.len());
                    prop_assert!(p.layers[first_file..].iter().all(|&l| l == FILE));
                    prop_assert_eq!(p.slots, slots);
                    prop_assert_eq!(p.slot_bytes, *layers[f..].iter().max().unwrap());
                } else {
                    prop_assert_eq!(p.slots, 0);
                }
            }
            Err(PlacementError::GpuBudget { needed_bytes, .. }) => {
                prop_assert!(needed_bytes > gpu);
                // No split fits: even every layer streamed needs more than the budget.
                let all_streamed = fixed + reserve + layers.iter().max().copied().unwrap_or(0) * slots as u64;
                prop_assert!(all_streamed > gpu || layers.is_empty());
            }
            Err(PlacementError::HostBudget { staging_bytes, budget_bytes }) => {
                prop_assert!(staging_bytes > budget_bytes);
            }
            Err(e) => prop_assert!(false, "unexpected error {}", e),
        }
    }
}
