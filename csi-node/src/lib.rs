pub mod fs;
pub mod pool_executor;
