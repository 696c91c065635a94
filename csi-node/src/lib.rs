pub mod fs;
pub mod identity;
pub mod node;
pub mod pool_executor;
pub mod serve;
pub mod status;
