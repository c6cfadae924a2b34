#!/bin/sh
# A C++ compiler command for builds that ask for an older standard than torch's headers need:
# runs ${MMLSTRIDE_CXX:-c++} with -std=c++14 or -std=c++17 raised to -std=c++20. mmcv 2.1.0's
# setup.py asks for C++17, and torch 2.14's headers require C++20 (tools/install_mmcv.sh).
for arg in "$@"; do
  case $arg in -std=c++14 | -std=c++17) arg=-std=c++20 ;; esac
  set -- "$@" "$arg"
  shift
done
exec "${MMLSTRIDE_CXX:-c++}" "$@"
