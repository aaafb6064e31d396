// being written
#include "coordinator/tokenizer/tokenizer.h"
