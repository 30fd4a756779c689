//! Spawning the bridge's long-lived and helper tasks: every task gets a
//! name, carried as a tracing span (`task{name=…}`) on everything it logs,
//! so a log line always says which loop wrote it, and a task that ends by
//! panicking says so under its name.

use std::future::Future;

use tracing::Instrument;

/// `tokio::spawn` under `name`.
pub fn spawn<F>(name: &'static str, fut: F) -> tokio::task::JoinHandle<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    tokio::spawn(fut.instrument(tracing::info_span!("task", name)))
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    /// Log lines written by a task carry its name.
    #[test]
    fn a_tasks_log_lines_carry_its_name() {
        #[derive(Clone, Default)]
        struct Buf(Arc<Mutex<Vec<u8>>>);
        impl std::io::Write for Buf {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let buf = Buf::default();
        let out = buf.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || out.clone())
            .with_ansi(false)
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap();
            rt.block_on(async {
                super::spawn("pull", async { tracing::info!("polled") })
                    .await
                    .unwrap();
            });
        });
        let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        assert!(
            text.contains("task{name=\"pull\"}") && text.contains("polled"),
            "{text}"
        );
    }
}
