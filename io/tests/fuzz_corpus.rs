//! The fuzz oracles over the committed seed corpora (`../fuzz/corpus/<target>/`), so every seed
//! and every crash saved there is an ordinary test case.
use std::path::Path;

use airllama_io::layout::ModelLayout;
use airllama_io::model::ModelHeader;

fn corpus(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus").join(target);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|p| (p.file_name().unwrap().to_string_lossy().into_owned(), std::fs::read(&p).unwrap()))
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
    assert_eq!(valid_layouts, 4, "each golden variant has a tiny complete model");
}
