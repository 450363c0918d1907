//! Element-wise, normalisation, positional, attention and routing ops (to be written).
