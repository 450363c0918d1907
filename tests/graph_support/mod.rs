//! Helpers shared by the graph builder tests.
use airllama_net::{NodeConfig, OpParams, RopeKind};

/// Which bytes of an encoded node config dllama leaves uninitialised, found by re-encoding the
/// config with those fields perturbed: (the 1-byte configs of ops whose C struct is empty, the
/// falcon RoPE slice fields dllama's `sliceRope` never sets).
pub fn undefined_bytes(node: &NodeConfig) -> (Vec<usize>, Vec<usize>) {
    let mut base = Vec::new();
    node.encode(&mut base);
    let diff = |perturbed: &NodeConfig| {
        let mut bytes = Vec::new();
        perturbed.encode(&mut bytes);
        assert_eq!(bytes.len(), base.len());
        (0..base.len())
            .filter(|&i| bytes[i] != base[i])
            .collect::<Vec<_>>()
    };
    let mut empty = node.clone();
    let mut rope = node.clone();
    for (e, r) in empty.segments.iter_mut().zip(rope.segments.iter_mut()) {
        for (eo, ro) in e.ops.iter_mut().zip(r.ops.iter_mut()) {
            match &mut eo.params {
                OpParams::MergeAdd(c)
                | OpParams::MergeSum(c)
                | OpParams::Embedding(c)
                | OpParams::Gelu(c)
                | OpParams::Silu(c)
                | OpParams::Cast(c)
                | OpParams::RepeatZ(c)
                | OpParams::Softmax(c) => c.raw = c.raw.map(|b| !b),
                _ => {}
            }
            if let OpParams::Rope(c) = &mut ro.params
                && c.rope_type == RopeKind::Falcon
            {
                let s = &mut c.slice;
                for v in [
                    &mut s.q_dim_start,
                    &mut s.q_dim_end,
                    &mut s.q_shift,
                    &mut s.kv_dim_start,
                    &mut s.slice_dim,
                ] {
                    *v = !*v;
                }
            }
        }
    }
    (diff(&empty), diff(&rope))
}

/// Sets the bytes dllama leaves uninitialised to what the builder emits (0), so configs decoded
/// from a recording can be compared with built ones field by field.
pub fn zero_undefined(node: &mut NodeConfig) {
    for segment in &mut node.segments {
        for op in &mut segment.ops {
            match &mut op.params {
                OpParams::MergeAdd(c)
                | OpParams::MergeSum(c)
                | OpParams::Embedding(c)
                | OpParams::Gelu(c)
                | OpParams::Silu(c)
                | OpParams::Cast(c)
                | OpParams::RepeatZ(c)
                | OpParams::Softmax(c) => c.raw = c.raw.map(|_| 0),
                OpParams::Rope(c) if c.rope_type == RopeKind::Falcon => {
                    let s = &mut c.slice;
                    s.q_dim_start = 0;
                    s.q_dim_end = 0;
                    s.q_shift = 0;
                    s.kv_dim_start = 0;
                    s.slice_dim = 0;
                }
                _ => {}
            }
        }
    }
}
