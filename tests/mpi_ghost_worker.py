"""MPI job for test_ghost.py: ``comm=`` with ``virtual_batch_size`` raises
ValueError on the ranks that pass both, and every other rank raises too
(none waits in a collective); the communicator stays usable."""
import numpy as np
from mpi4py import MPI

import fastbn

comm = MPI.COMM_WORLD
rank, size = comm.Get_rank(), comm.Get_size()
x = np.random.default_rng(rank).standard_normal((4, 3, 5)).astype(np.float32)


def expect(exc, words, fn):
    try:
        fn()
    except exc as e:
        assert all(w in str(e) for w in words), (rank, str(e))
        return
    raise AssertionError(f"rank {rank}: no {exc.__name__}")


# every rank passes both: ValueError everywhere
expect(ValueError, ["cannot be combined with comm"],
       lambda: fastbn.batch_norm_train(x, comm=comm, virtual_batch_size=2))
y, m, s = fastbn.batch_norm_train(x, comm=comm)
expect(ValueError, ["cannot be combined with comm"],
       lambda: fastbn.batch_norm_backward(x, x, m, s, comm=comm,
                                          virtual_batch_size=2))
# only rank 0 passes virtual_batch_size: the others are told
if rank == 0:
    expect(ValueError, ["cannot be combined with comm"],
           lambda: fastbn.batch_norm_train(x, comm=comm, virtual_batch_size=2))
else:
    expect(RuntimeError, ["rank 0"], lambda: fastbn.batch_norm_train(x, comm=comm))
# the communicator is still usable
y2, m2, s2 = fastbn.batch_norm_train(x, comm=comm)
assert np.array_equal(m, m2) and np.array_equal(y, y2)
comm.Barrier()
if rank == 0:
    print(f"mpi_ghost_worker: {size} ranks ok")
