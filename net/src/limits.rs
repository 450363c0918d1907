//! Limits on every count, length and size the decoders accept. They are far above what dllama
//! builds for any model it supports (Llama 3.1 405B: 126 layers, 254 segments, ~400 buffers) and
//! low enough that a hostile peer cannot make a worker allocate more than a few megabytes of
//! config before the config is known to be consistent.

/// Most workers a handshake may announce (dllama's `nSockets` at the root).
pub const MAX_WORKERS: u32 = 1023;
/// Most nodes (root + workers) a net config may declare.
pub const MAX_NODES: u32 = MAX_WORKERS + 1;
/// Most batch items (`nBatches`); dllama uses 32.
pub const MAX_BATCHES: u32 = 1024;
/// Most pipes in a net config; dllama's LLM net has 5.
pub const MAX_PIPES: u32 = 256;
/// Most pre-syncs in a net config; dllama's LLM net has 1.
pub const MAX_PRE_SYNCS: u32 = 256;
/// Most buffers in a node config.
pub const MAX_BUFFERS: u32 = 8192;
/// Most segments in a node config (2 per layer + 2 for dllama's LLM net).
pub const MAX_SEGMENTS: u32 = 8192;
/// Most ops in one segment.
pub const MAX_OPS_PER_SEGMENT: u32 = 1024;
/// Most ops in a whole node config.
pub const MAX_OPS: u32 = 65536;
/// Most syncs in one segment.
pub const MAX_SYNCS_PER_SEGMENT: u32 = 64;
/// Longest name (pipe, buffer, op, weight record), counting the terminating NUL.
pub const MAX_NAME_LEN: u32 = 256;
/// Longest host name in a handshake, counting the terminating NUL.
pub const MAX_HOST_LEN: u32 = 256;
/// Most elements in one Size3D (`z·y·x`). dllama computes the product in a 32-bit `NnUint`, so
/// a larger tensor would be mis-sized by dllama itself.
pub const MAX_ELEMENTS: u64 = u32::MAX as u64;
/// Most experts of a MoE matmul.
pub const MAX_EXPERTS: u32 = 1024;
/// Largest op config blob: `sizeof(NnRopeOpConfig)` = 120 is the biggest dllama has.
pub const MAX_OP_CONFIG_SIZE: u32 = 120;
/// Most bytes a transport buffers while decoding one config message (net or node config).
pub const MAX_CONFIG_MESSAGE_BYTES: usize = 16 << 20;
