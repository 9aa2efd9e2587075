/*
 * openmp.c -- what the OpenMP runtime fastbn was built with says (see
 * fastbn.h); 1 thread and version 0 in a build without OpenMP.
 */
#ifdef _OPENMP
#include <omp.h>
#endif

#include "fastbn.h"

int fbn_have_openmp(void)
{
#ifdef _OPENMP
    return 1;
#else
    return 0;
#endif
}

int fbn_omp_max_threads(void)
{
#ifdef _OPENMP
    return omp_get_max_threads();
#else
    return 1;
#endif
}

long fbn_openmp_version(void)
{
#ifdef _OPENMP
    return (long)_OPENMP;
#else
    return 0;
#endif
}
