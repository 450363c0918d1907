//! Quantization and float conversion (to be written).
