//! Upload bytes to the object store: request bodies of any size go out as multipart-upload
//! parts of [`PART_SIZE`] bytes while they arrive (hashed on the way); what is left at the
//! end of a request, less than a part, is kept as a *piece* object until the next request —
//! on this replica or another — continues, or the commit makes it the last part.
//!
//! Memory: one upload holds at most two part buffers (one filling, one being sent), and all
//! uploads of a process share a budget of part buffers ([`PartBudget`]); a request that would
//! exceed it waits, so memory stays bounded whatever the number of clients.

use std::sync::Arc;

use bytes::Bytes;
use object_store::PutPayload;
use object_store::multipart::{MultipartStore, PartId};
use serde::{Deserialize, Serialize};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;

use super::objects::{Objects, store_error};
use crate::storage::{Result, StorageError};

/// Size of every part but the last (S3 wants at least 5 MiB; 10,000 parts make the largest
/// blob about 78 GiB).
pub(crate) const PART_SIZE: usize = 8 * 1024 * 1024;
/// S3's limit on the number of parts of one upload.
const MAX_PARTS: usize = 10_000;

/// Part buffers all uploads of a process may hold at once.
#[derive(Clone, Debug)]
pub(crate) struct PartBudget(Arc<Semaphore>);

impl PartBudget {
    pub fn new(buffers: usize) -> Self {
        PartBudget(Arc::new(Semaphore::new(buffers.max(2))))
    }

    async fn acquire(&self) -> Result<OwnedSemaphorePermit> {
        self.0
            .clone()
            .acquire_owned()
            .await
            .map_err(|e| StorageError::Backend {
                context: "part buffer budget".into(),
                source: Box::new(e),
            })
    }
}

/// Bytes of an upload kept as an object of their own (less than a part).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Piece {
    pub key: String,
    pub size: u64,
}

/// Where an upload's bytes are: parts of a multipart upload, then pieces.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Written {
    /// The multipart upload (at the data key), once a first whole part was sent.
    #[serde(default)]
    pub multipart: Option<String>,
    /// E-tags of the parts sent, in order.
    #[serde(default)]
    pub parts: Vec<String>,
    /// Bytes after the last part, in order.
    #[serde(default)]
    pub pieces: Vec<Piece>,
}

/// The data objects of an upload live under `data/<id>/`: the blob assembled from its parts
/// at `data/<id>/blob`, pieces beside it under random names (two replicas continuing the
/// same session can never overwrite each other's pieces).
pub(crate) fn data_dir(id: &str) -> String {
    format!("data/{id}/")
}

pub(crate) fn data_key(id: &str) -> String {
    format!("data/{id}/blob")
}

/// Collects bytes into parts and sends them; see the module documentation.
pub(crate) struct PartWriter {
    objects: Arc<Objects>,
    upload: String,
    written: Written,
    /// Bytes in `written.pieces` (pieces of earlier requests, not yet in a part).
    pending: usize,
    /// Pieces folded into parts or into the blob: to delete once the new state is saved.
    consumed: Vec<Piece>,
    buffer: Vec<Bytes>,
    buffered: usize,
    permit: Option<OwnedSemaphorePermit>,
    in_flight: Option<JoinHandle<Result<PartId>>>,
    budget: PartBudget,
}

impl PartWriter {
    pub fn new(objects: Arc<Objects>, upload: &str, written: Written, budget: PartBudget) -> Self {
        let pending = written.pieces.iter().map(|p| p.size as usize).sum();
        PartWriter {
            objects,
            upload: upload.to_owned(),
            written,
            pending,
            consumed: Vec::new(),
            buffer: Vec::new(),
            buffered: 0,
            permit: None,
            in_flight: None,
            budget,
        }
    }

    /// Adds bytes; sends a part whenever one is full.
    pub async fn push(&mut self, mut chunk: Bytes) -> Result<()> {
        while !chunk.is_empty() {
            if self.permit.is_none() {
                self.permit = Some(self.budget.acquire().await?);
            }
            let room = PART_SIZE - (self.pending + self.buffered);
            let take = room.min(chunk.len());
            self.buffer.push(chunk.split_to(take));
            self.buffered += take;
            if self.pending + self.buffered == PART_SIZE {
                self.send_part().await?;
            }
        }
        Ok(())
    }

    /// The pieces of earlier requests and the buffer, in order, as one list of buffers.
    async fn take_all(&mut self) -> Result<Vec<Bytes>> {
        let mut out = Vec::with_capacity(self.written.pieces.len() + self.buffer.len());
        for piece in std::mem::take(&mut self.written.pieces) {
            out.push(read_piece(&self.objects, &piece).await?);
            self.consumed.push(piece);
        }
        self.pending = 0;
        out.append(&mut self.buffer);
        self.buffered = 0;
        Ok(out)
    }

    async fn multipart_id(&mut self) -> Result<String> {
        if let Some(id) = &self.written.multipart {
            return Ok(id.clone());
        }
        let key = data_key(&self.upload);
        let id = self
            .objects
            .store()
            .create_multipart(&self.objects.path(&key))
            .await
            .map_err(|e| store_error(format!("starting a multipart upload at {key}"), e))?;
        self.written.multipart = Some(id.clone());
        Ok(id)
    }

    /// Waits for the part being sent, if any, and records its e-tag.
    async fn wait_in_flight(&mut self) -> Result<()> {
        if let Some(h) = self.in_flight.take() {
            let part = h.await.map_err(|e| StorageError::Backend {
                context: "sending a part".into(),
                source: Box::new(e),
            })??;
            self.written.parts.push(part.content_id);
        }
        Ok(())
    }

    /// Sends the full buffer as the next part, in the background (one at a time).
    async fn send_part(&mut self) -> Result<()> {
        let data = self.take_all().await?;
        let permit = self.permit.take();
        let id = self.multipart_id().await?;
        self.wait_in_flight().await?;
        let index = self.written.parts.len();
        if index >= MAX_PARTS {
            return Err(StorageError::BodyRead(format!(
                "blobs larger than {} GiB cannot be stored",
                (MAX_PARTS * PART_SIZE) >> 30
            )));
        }
        let objects = self.objects.clone();
        let key = data_key(&self.upload);
        self.in_flight = Some(tokio::spawn(async move {
            let r = objects
                .store()
                .put_part(&objects.path(&key), &id, index, PutPayload::from_iter(data))
                .await
                .map_err(|e| store_error(format!("sending part {} of {key}", index + 1), e));
            drop(permit);
            r
        }));
        Ok(())
    }

    /// Ends a request: waits for the part in flight and keeps what is left as a new piece.
    /// Returns where the upload's bytes now are, and the pieces no longer needed.
    pub async fn finish(mut self) -> Result<(Written, Vec<Piece>)> {
        self.wait_in_flight().await?;
        if self.buffered > 0 {
            let key = format!(
                "{}{}",
                data_dir(&self.upload),
                uuid::Uuid::new_v4().simple()
            );
            let size = self.buffered as u64;
            let buffer = std::mem::take(&mut self.buffer);
            self.objects
                .put(&key, PutPayload::from_iter(buffer))
                .await?;
            self.written.pieces.push(Piece { key, size });
            self.buffered = 0;
        }
        Ok((self.written, self.consumed))
    }

    /// Ends the upload: makes everything one object (the last part and the multipart
    /// completion; or the only piece as it is; or the pieces and buffer written whole) and
    /// checks its size. Returns the data key and the pieces no longer needed.
    pub async fn complete(mut self, size: u64) -> Result<(String, Vec<Piece>)> {
        self.wait_in_flight().await?;
        let key = data_key(&self.upload);
        let Some(id) = self.written.multipart.clone() else {
            if self.buffered == 0 && self.written.pieces.len() == 1 {
                let piece = self.written.pieces.remove(0);
                return Ok((piece.key, std::mem::take(&mut self.consumed)));
            }
            let data = self.take_all().await?;
            self.objects.put(&key, PutPayload::from_iter(data)).await?;
            self.permit = None;
            return Ok((key, std::mem::take(&mut self.consumed)));
        };
        let rest = self.take_all().await?;
        if rest.iter().any(|b| !b.is_empty()) {
            let index = self.written.parts.len();
            let part = self
                .objects
                .store()
                .put_part(
                    &self.objects.path(&key),
                    &id,
                    index,
                    PutPayload::from_iter(rest),
                )
                .await
                .map_err(|e| store_error(format!("sending the last part of {key}"), e))?;
            self.written.parts.push(part.content_id);
        }
        self.permit = None;
        let parts = self
            .written
            .parts
            .iter()
            .map(|e| PartId {
                content_id: e.clone(),
            })
            .collect();
        match self
            .objects
            .store()
            .complete_multipart(&self.objects.path(&key), &id, parts)
            .await
        {
            Ok(_) => {}
            // Completed before: by a commit that died before it could record the blob, or
            // by a retry of this request whose first answer was lost.
            Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(store_error(format!("completing {key}"), e)),
        }
        match self.objects.head(&key).await? {
            Some(m) if m.size == size => Ok((key, std::mem::take(&mut self.consumed))),
            Some(m) => Err(StorageError::Backend {
                context: format!("completing {key}"),
                source: format!(
                    "the store assembled {} bytes, not the {size} received",
                    m.size
                )
                .into(),
            }),
            None => Err(StorageError::UploadUnknown(self.upload.clone())),
        }
    }
}

async fn read_piece(objects: &Objects, piece: &Piece) -> Result<Bytes> {
    match objects.get(&piece.key).await? {
        Some((bytes, _)) if bytes.len() as u64 == piece.size => Ok(bytes),
        Some((bytes, _)) => Err(StorageError::Backend {
            context: format!("reading {}", piece.key),
            source: format!("{} bytes, not the {} written", bytes.len(), piece.size).into(),
        }),
        None => Err(StorageError::Backend {
            context: format!("reading {}", piece.key),
            source: "the piece is gone".into(),
        }),
    }
}
