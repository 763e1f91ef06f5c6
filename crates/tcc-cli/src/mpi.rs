//! Calibration across processes over MPI (feature `mpi`): every rank walks
//! its shard of the calibration and validation samples, and at every
//! calibrated step the ranks exchange their statistics (`Allgatherv`) and
//! each adds them up in rank order (see `tcc_calib::Gathered`).

use mpi::datatype::PartitionMut;
use mpi::environment::Universe;
use mpi::topology::SimpleCommunicator;
use mpi::traits::*;
use tcc_calib::{AllGather, CalibError};

use crate::error::CliError;

/// This process's place in an MPI job of more than one process.
pub struct Mpi {
    world: SimpleCommunicator,
    // Finalizes MPI when dropped: after `world`.
    _universe: Universe,
}

impl Mpi {
    /// Joins the MPI job this process was launched in (`mpirun`, `srun`);
    /// `None` when it runs alone.
    pub fn join() -> Result<Option<Mpi>, CliError> {
        let universe = mpi::initialize()
            .ok_or_else(|| CliError::Failure("MPI was initialised already".into()))?;
        let world = universe.world();
        if world.size() < 2 {
            return Ok(None);
        }
        Ok(Some(Mpi {
            world,
            _universe: universe,
        }))
    }

    pub fn rank(&self) -> usize {
        self.world.rank() as usize
    }

    pub fn size(&self) -> usize {
        self.world.size() as usize
    }

    pub fn gather(&self) -> Gather<'_> {
        Gather(&self.world)
    }
}

/// `Allgatherv` of bytes over the world communicator.
pub struct Gather<'a>(&'a SimpleCommunicator);

impl AllGather for Gather<'_> {
    fn all_gather(&mut self, bytes: Vec<u8>) -> Result<Vec<Vec<u8>>, CalibError> {
        let size = self.0.size() as usize;
        let count = i32::try_from(bytes.len()).map_err(|_| {
            CalibError::Io(format!(
                "{} bytes of statistics exceed one MPI message (2 GiB): use more ranks or fewer calibrated sites per step",
                bytes.len()
            ))
        })?;
        let mut counts = vec![0i32; size];
        self.0.all_gather_into(&count, &mut counts[..]);
        let mut displs = Vec::with_capacity(size);
        let mut total: i64 = 0;
        for &c in &counts {
            displs.push(
                i32::try_from(total).map_err(|_| {
                    CalibError::Io("the ranks' statistics exceed 2 GiB in all".into())
                })?,
            );
            total += c as i64;
        }
        let mut buf = vec![0u8; total as usize];
        {
            let mut part = PartitionMut::new(&mut buf[..], counts.clone(), &displs[..]);
            self.0.all_gather_varcount_into(&bytes[..], &mut part);
        }
        Ok(counts
            .iter()
            .zip(&displs)
            .map(|(&c, &d)| buf[d as usize..(d + c) as usize].to_vec())
            .collect())
    }
}
