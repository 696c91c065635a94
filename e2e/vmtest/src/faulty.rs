//! A test-only [`Kernel`] wrapper that makes the next `set_transaction_id`
//! fail once, before or after sending it, over any kernel: the real one in
//! the VM, the model in `cargo test`. Product code has no such switch.

use thinpool::cases::{CommitPointFaults, Fixture};
use thinpool::{ActiveThin, Kernel, KernelError, PoolMessage, PoolStatus, Sectors, ThinId};

pub struct FlakyCommitPoint<K> {
    pub inner: K,
    /// Some(after_send) while armed.
    armed: Option<bool>,
    /// What the kernel answered the last `set_transaction_id` sent to it.
    pub last_commit_point: Option<Result<(), KernelError>>,
}

impl<K> FlakyCommitPoint<K> {
    pub fn new(inner: K) -> Self {
        FlakyCommitPoint { inner, armed: None, last_commit_point: None }
    }
}

impl<K> CommitPointFaults for FlakyCommitPoint<K> {
    fn fail_next_commit_point(&mut self, after_send: bool) {
        self.armed = Some(after_send);
    }
}

impl<K: Kernel> Kernel for FlakyCommitPoint<K> {
    fn pool_status(&self) -> Result<PoolStatus, KernelError> {
        self.inner.pool_status()
    }
    fn message(&mut self, message: &PoolMessage) -> Result<(), KernelError> {
        if matches!(message, PoolMessage::SetTransactionId { .. }) {
            if let Some(after_send) = self.armed.take() {
                let detail = if after_send {
                    let sent = self.inner.message(message);
                    self.last_commit_point = Some(sent.clone());
                    sent?;
                    "sent, reply lost (injected)"
                } else {
                    "not sent (injected)"
                };
                return Err(KernelError::Other { context: message.to_string(), detail: detail.into() });
            }
        }
        let sent = self.inner.message(message);
        if matches!(message, PoolMessage::SetTransactionId { .. }) {
            self.last_commit_point = Some(sent.clone());
        }
        sent
    }
    fn active_thins(&self) -> Result<Vec<ActiveThin>, KernelError> {
        self.inner.active_thins()
    }
    fn active_thin(&self, id: ThinId) -> Result<Option<ActiveThin>, KernelError> {
        self.inner.active_thin(id)
    }
    fn suspend_thin(&mut self, id: ThinId) -> Result<(), KernelError> {
        self.inner.suspend_thin(id)
    }
    fn resume_thin(&mut self, id: ThinId) -> Result<(), KernelError> {
        self.inner.resume_thin(id)
    }
    fn activate_thin(&mut self, id: ThinId, size: Sectors) -> Result<(), KernelError> {
        self.inner.activate_thin(id, size)
    }
    fn deactivate_thin(&mut self, id: ThinId) -> Result<(), KernelError> {
        self.inner.deactivate_thin(id)
    }
}

impl<K: Fixture> Fixture for FlakyCommitPoint<K> {
    fn write_pattern(&mut self, id: ThinId, seed: u64) -> Result<(), String> {
        self.inner.write_pattern(id, seed)
    }
    fn read_pattern(&mut self, id: ThinId) -> Result<u64, String> {
        self.inner.read_pattern(id)
    }
    fn hold_open(&mut self, id: ThinId) -> Result<(), String> {
        self.inner.hold_open(id)
    }
    fn release(&mut self, id: ThinId) -> Result<(), String> {
        self.inner.release(id)
    }
    fn raw_message(&mut self, text: &str) -> Result<(), KernelError> {
        self.inner.raw_message(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use thinpool::cases::{commit_point_cases, Session};
    use thinpool::model::ModelKernel;

    /// The same cases the VM runs on the real kernel (`commit-point`).
    #[test]
    fn commit_point_cases_pass_on_the_model() {
        let mut s = Session::new(FlakyCommitPoint::new(ModelKernel::new()), 1).unwrap();
        for (name, case) in commit_point_cases::<FlakyCommitPoint<ModelKernel>>() {
            case(&mut s).unwrap_or_else(|why| panic!("{name}: {why}"));
            assert_eq!(s.kernel.inner.unsafe_snapshots, 0, "{name}: a snapshot of a running origin");
        }
    }
}
