#!/bin/sh
# Boot 1 of the power-cut test: commit transactions until the host pulls the plug.
thin-vmtest powerrun --device /dev/vda --record /dev/vdb
