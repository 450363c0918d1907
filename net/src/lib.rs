//! airllama-net: the distributed-llama wire protocol (to be written).
#![cfg_attr(not(feature = "std"), no_std)]
