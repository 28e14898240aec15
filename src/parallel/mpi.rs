//! [`ProcessGroup`] over MPI (rsmpi): data parallel across processes and hosts, one or
//! more replicas per process, gradients summed by `MPI_Allreduce` on host buffers.

use mpi::collective::SystemOperation;
use mpi::topology::{Communicator, SimpleCommunicator};
use mpi::traits::CommunicatorCollectives;

use super::ProcessGroup;
use crate::error::{Error, Result};

/// The processes of `MPI_COMM_WORLD` (started by `mpirun`). MPI stays initialised while
/// this lives; make one per process.
pub struct MpiGroup {
    // Finalises MPI when dropped, after `world`.
    world: SimpleCommunicator,
    _universe: mpi::environment::Universe,
}

impl MpiGroup {
    /// Initialises MPI and joins `MPI_COMM_WORLD`.
    ///
    /// Errors: `Unsupported` when MPI was initialised already in this process.
    pub fn init() -> Result<Self> {
        let universe = mpi::initialize().ok_or(Error::Unsupported {
            op: "MpiGroup::init",
            msg: "MPI is initialised already in this process".into(),
        })?;
        Ok(Self { world: universe.world(), _universe: universe })
    }
}

impl ProcessGroup for MpiGroup {
    fn rank(&self) -> usize {
        self.world.rank() as usize
    }

    fn size(&self) -> usize {
        self.world.size() as usize
    }

    fn all_reduce_sum(&self, data: &mut [f32]) -> Result<()> {
        let send = data.to_vec();
        self.world.all_reduce_into(&send[..], data, SystemOperation::sum());
        Ok(())
    }
}
