#!/bin/sh
# Boot 2 of the power-cut test: find the pool by its header, recover, check.
thin-vmtest powercheck --candidates /dev/vda,/dev/vdc --record /dev/vdb
