//! Matrix multiplication kernels (to be written).
