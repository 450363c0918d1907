//! Fuzz oracles: each takes arbitrary bytes, must never panic on them, and panics only when an
//! invariant of the library is broken. The `fuzz/` targets are one-line calls of these, and unit
//! tests run them over the committed seed corpora, so a crash found by the fuzzer becomes an
//! ordinary test case.
use crate::layout::{ModelLayout, NodeSplit, SplitKind};
use crate::model::ModelHeader;

/// Largest node count the oracle tries splits for.
const MAX_FUZZ_NODES: u32 = 4;

/// Largest `n_layers × experts` for which the oracle also builds the layout a header implies
/// when the input's length does not match it (keeps each fuzz iteration fast).
const MAX_FUZZ_LAYER_EXPERTS: u64 = 4096;

/// `.m` header and layout oracle: parse `data` as a model file; when it parses, the encoding
/// must reproduce the header bytes and parse back to the same header, the `Read` helper must
/// agree, and when a layout can be built (for `data`'s length, or for the size the header
/// implies) its tensors must tile the file and every valid node split must cover each tensor as
/// [`check_node_split`] requires.
pub fn model_header(data: &[u8]) {
    let Ok(header) = ModelHeader::parse(data) else {
        // The stream reader must refuse what the slice parser refuses.
        assert!(ModelHeader::read_from(&mut &data[..]).is_err());
        return;
    };
    let encoded = header.encode();
    assert_eq!(encoded.len() as u64, header.header_size());
    assert_eq!(
        data.get(..encoded.len()),
        Some(&encoded[..]),
        "encode differs from the input"
    );
    assert_eq!(
        ModelHeader::parse(&encoded).as_ref(),
        Ok(&header),
        "re-parse differs"
    );
    let read = ModelHeader::read_from(&mut &data[..]).expect("read_from refused a valid header");
    assert_eq!(read, header);

    let layout = match ModelLayout::new(&header, data.len() as u64) {
        Ok(layout) => Some(layout),
        Err(
            crate::layout::LayoutError::FileTooShort { expected, .. }
            | crate::layout::LayoutError::FileTooLong { expected, .. },
        ) => {
            let c = header.config();
            let work = u64::from(c.n_layers) * u64::from(c.n_experts_or_1());
            if work <= MAX_FUZZ_LAYER_EXPERTS {
                let layout = ModelLayout::new(&header, expected).expect("implied size refused");
                Some(layout)
            } else {
                None
            }
        }
        Err(_) => None,
    };
    let Some(layout) = layout else { return };
    check_layout(&layout);
    for n_nodes in 1..=MAX_FUZZ_NODES {
        if let Ok(split) = layout.node_split(n_nodes) {
            check_node_split(&split);
        }
    }
}

/// Panics unless the tensors start at the header's end, follow each other without gaps or
/// overlaps, have the size their shape and type imply, and end at the file's last byte.
pub fn check_layout(layout: &ModelLayout) {
    let mut at = layout.header_size();
    for t in layout.tensors() {
        assert_eq!(t.offset, at, "gap or overlap before {t:?}");
        let row = t
            .float_type
            .bytes_for(u64::from(t.cols))
            .expect("row is not whole blocks");
        assert_eq!(t.size, row * u64::from(t.rows), "size of {t:?}");
        at += t.size;
    }
    assert_eq!(
        at,
        layout.file_size(),
        "tensors do not end at the end of the file"
    );
}

/// Panics unless, for every tensor: a row- or column-split tensor is covered exactly once by
/// the slices of all nodes (every byte in one slice, no slice outside the tensor), each node's
/// slice has the same size, a replicated tensor goes whole to every node, and a root-only
/// tensor goes whole to node 0 only.
pub fn check_node_split(split: &NodeSplit<'_>) {
    let n = split.n_nodes();
    for (index, t) in split.layout().tensors().iter().enumerate() {
        let slices: Vec<_> = (0..n).map(|node| split.slice(index, node)).collect();
        assert!(split.slice(index, n).is_none());
        match t.split() {
            SplitKind::RootOnly | SplitKind::Replicated => {
                for (node, s) in slices.iter().enumerate() {
                    let s = match s {
                        None => {
                            assert!(t.split() == SplitKind::RootOnly && node > 0);
                            continue;
                        }
                        Some(s) => s,
                    };
                    assert!(t.split() == SplitKind::Replicated || node == 0);
                    assert_eq!(s.bytes.ranges().collect::<Vec<_>>(), vec![t.range()]);
                    assert_eq!(s.op_offset, 0);
                }
            }
            SplitKind::Rows | SplitKind::Columns => {
                // Checked without listing every row, so huge (fuzzed) shapes stay cheap: a row
                // split is contiguous pieces; a column split is, for every row alike, pieces of
                // that row (or the whole tensor when one node takes all of it).
                let mut pieces = Vec::new();
                for s in &slices {
                    let s = s.expect("a split tensor misses a node");
                    assert_eq!(Some(s.bytes.total_bytes()), split.slice_bytes(index));
                    let expert = u64::from(t.expert.unwrap_or(0));
                    assert_eq!(s.op_offset, expert * s.bytes.total_bytes());
                    let b = s.bytes;
                    let columns = t.split() == SplitKind::Columns && n > 1 && t.rows > 1;
                    if columns {
                        assert_eq!((b.rows, b.row_stride), (u64::from(t.rows), t.row_bytes()));
                        pieces.push(b.start..b.start + b.bytes_per_row);
                    } else {
                        assert!(b.is_contiguous(), "{t:?} {b:?}");
                        pieces.push(b.start..b.end());
                    }
                }
                pieces.sort_by_key(|r| r.start);
                let columns = t.split() == SplitKind::Columns && n > 1 && t.rows > 1;
                let end = if columns {
                    t.offset + t.row_bytes()
                } else {
                    t.range().end
                };
                let mut at = t.offset;
                for r in pieces {
                    assert_eq!(r.start, at, "slices of {t:?} leave a gap or overlap");
                    at = r.end;
                }
                assert_eq!(at, end, "slices of {t:?} do not reach its end");
            }
        }
    }
}
