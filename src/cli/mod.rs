//! One module per subcommand: flags parsed by clap, validated, then handed to the library.
pub mod api;
pub mod bench;
pub mod chat;
pub mod cleanup;
pub mod convert;
pub mod gen_model;
pub mod inference;
pub mod inspect;
pub mod output;
pub mod replay;
pub mod worker;
