//! GPU correctness: every fixture, every road, byte-exact. Skips (with one line) where there is
//! no CUDA driver or device.

#[test]
fn fixtures_reach_the_gpu_byte_exact() {
    if let Err(e) = hoist_cuda::probe(0) {
        eprintln!("skipping GPU tests: {e}");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let results = hoist_testkit::selftest::run(dir.path(), 0).unwrap();
    let failed: Vec<_> = results.iter().filter(|r| !r.ok).collect();
    assert!(failed.is_empty(), "{failed:#?}");
}

#[test]
fn no_gpu_is_an_error_not_a_panic() {
    // Whatever this machine has, asking for a device far out of range must be an error.
    let e = hoist_cuda::probe(4096).unwrap_err();
    assert!(!e.to_string().is_empty());
    let table_dir = tempfile::tempdir().unwrap();
    let spec = hoist_synth::preset("tiny").unwrap().spec;
    let root = hoist_synth::write_checkpoint(&spec, table_dir.path(), 1).unwrap();
    let table = hoist_format::TensorTable::open(&root).unwrap();
    let all: Vec<usize> = (0..table.tensors.len()).collect();
    let gpu = hoist_cuda::GpuConfig {
        ordinal: 4096,
        ..Default::default()
    };
    let r = hoist_cuda::load_to_gpu(
        &table,
        &all,
        Default::default(),
        &Default::default(),
        &gpu,
        None,
    );
    assert!(r.is_err());
}

#[test]
fn fixtures_parse() {
    let dir = tempfile::tempdir().unwrap();
    for f in hoist_testkit::fixtures::write_fixtures(dir.path()).unwrap() {
        let t =
            hoist_format::TensorTable::open(&f.path).unwrap_or_else(|e| panic!("{}: {e}", f.name));
        assert!(t.tensors.len() >= 3, "{}", f.name);
    }
}
