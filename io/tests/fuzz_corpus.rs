//! The fuzz oracles over the committed seed corpora (`../fuzz/corpus/<target>/`), so every seed
//! and every crash saved there is an ordinary test case.
use std::path::Path;

use airllama_io::layout::ModelLayout;
use airllama_io::model::ModelHeader;

fn corpus(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|p| {
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                std::fs::read(&p).unwrap(),
            )
        })
        .collect()
}

#[test]
fn model_header_corpus() {
    let seeds = corpus("model_header");
    assert!(seeds.len() >= 12, "seed corpus missing");
    let mut valid_layouts = 0;
    for (name, data) in &seeds {
        airllama_io::fuzzing::model_header(data);
        let header = ModelHeader::parse(data).unwrap_or_else(|e| panic!("{name}: {e}"));
        if let Ok(layout) = ModelLayout::new(&header, data.len() as u64) {
            // The tiny Q40 models split over 1 and 2 nodes; the F32 one over 1 and 2 as well.
            assert!(name.ends_with("-tiny"), "{name}");
            assert!(layout.node_split(2).is_ok(), "{name}");
            valid_layouts += 1;
        }
    }
    assert_eq!(
        valid_layouts, 4,
        "each golden variant has a tiny complete model"
    );
}

/// Random edits of the seeds (bytes overwritten anywhere in the header and the first tensors,
/// the length cut or extended) never make the oracle fail: typed errors or consistent results.
mod mutations {
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]
        #[test]
        fn edited_seeds(
            seed in 0usize..64,
            edits in proptest::collection::vec((0usize..256, any::<u8>()), 0..8),
            len_change in -64i64..64,
        ) {
            let seeds = super::corpus("model_header");
            let mut data = seeds[seed % seeds.len()].1.clone();
            for (at, byte) in edits {
                if let Some(b) = data.get_mut(at) {
                    *b = byte;
                }
            }
            let len = (data.len() as i64 + len_change).max(0) as usize;
            data.resize(len, 0x5a);
            airllama_io::fuzzing::model_header(&data);
        }
    }
}
